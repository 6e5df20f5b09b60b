//! The pure state of one consumer group on one topic: cursors, in-flight messages and the
//! due-time index. No I/O and no clock: callers pass `now` and collect the store writes that
//! each change needs in a [`Batch`], which they commit before answering.
//!
//! Lifecycle of a message for a group:
//! `cursor passes it` → **in flight** (attempt n, invisible until `visible_at`) →
//! `ack` → gone; or `visible_at` passes → due → delivered again with attempt n+1 (new nonce,
//! so the old receipt handle is refused) → … → past the attempt limit → dead-lettered.
//! A delay message not yet due becomes in flight with attempt 0 (never handed out) until its
//! delivery time. A FIFO message keeps its message group *busy* from delivery until ack or dead
//! letter, so the group's next message waits.

use crate::codec::{CodecError, Decoder, Encoder, Record};
use crate::log::QueueOffsets;
use crate::model::{Millis, StoredMessage};
use crate::store::{Batch, Key};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Position of a message: `(queue, offset)`.
pub type Pos = (u32, u64);

/// A message a group holds and has not acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    /// Deliveries so far (0 for a delay message not yet due).
    pub attempt: u32,
    pub visible_at: Millis,
    /// Identifies the current delivery; part of the receipt handle.
    pub nonce: u64,
    /// FIFO message group, if any.
    pub message_group: Option<String>,
    /// Client that received it (for broker-side renewal while that client lives).
    pub client: String,
    /// The broker renews invisibility while the client lives (`auto_renew` receives).
    pub auto_renew: bool,
    /// When the current run of renewals started.
    pub delivered_at: Millis,
}

impl Record for Inflight {
    const KIND: &'static str = "in-flight record";
    const VERSION: u8 = 1;

    fn write(&self, e: &mut Encoder) {
        e.u32(self.attempt)
            .i64(self.visible_at)
            .u64(self.nonce)
            .opt_str(self.message_group.as_deref())
            .str(&self.client)
            .bool(self.auto_renew)
            .i64(self.delivered_at);
    }

    fn read(d: &mut Decoder<'_>, _version: u8) -> Result<Self, CodecError> {
        Ok(Inflight {
            attempt: d.u32()?,
            visible_at: d.i64()?,
            nonce: d.u64()?,
            message_group: d.opt_str()?,
            client: d.str()?,
            auto_renew: d.bool()?,
            delivered_at: d.i64()?,
        })
    }
}

/// Why a receipt handle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// Nothing in flight there: acked already, dead-lettered, or never delivered.
    NotInFlight,
    /// The message was delivered again since this handle was issued.
    Stale,
}

/// One group's state on one topic.
#[derive(Debug)]
pub struct GroupTopic {
    pub group: String,
    pub topic: String,
    /// The filter of the group's latest receive on this topic: what the group consumes, so
    /// what its backlog counts.
    pub filter: Option<super::filter::Filter>,
    cursors: HashMap<u32, u64>,
    inflight: HashMap<Pos, Inflight>,
    due: BTreeSet<(Millis, u32, u64)>,
    busy_groups: HashSet<String>,
}

impl GroupTopic {
    pub fn new(group: &str, topic: &str) -> Self {
        Self {
            group: group.to_string(),
            topic: topic.to_string(),
            filter: None,
            cursors: HashMap::new(),
            inflight: HashMap::new(),
            due: BTreeSet::new(),
            busy_groups: HashSet::new(),
        }
    }

    /// Restores a cursor read from the store.
    pub fn load_cursor(&mut self, queue: u32, next: u64) {
        self.cursors.insert(queue, next);
    }

    /// Restores an in-flight record read from the store.
    pub fn load_inflight(&mut self, pos: Pos, rec: Inflight) {
        self.index(pos, rec);
    }

    fn index(&mut self, pos: Pos, rec: Inflight) {
        if let Some(old) = self.inflight.remove(&pos) {
            self.due.remove(&(old.visible_at, pos.0, pos.1));
        }
        if let Some(g) = &rec.message_group {
            self.busy_groups.insert(g.clone());
        }
        self.due.insert((rec.visible_at, pos.0, pos.1));
        self.inflight.insert(pos, rec);
    }

    fn key(&self, pos: Pos) -> Key {
        Key::Inflight { group: self.group.clone(), topic: self.topic.clone(), queue: pos.0, offset: pos.1 }
    }

    pub fn cursor(&self, queue: u32) -> Option<u64> {
        self.cursors.get(&queue).copied()
    }

    /// Moves a queue's cursor (never backwards) and records the write.
    pub fn set_cursor(&mut self, queue: u32, next: u64, batch: &mut Batch) {
        let cur = self.cursors.entry(queue).or_insert(next);
        if *cur > next {
            return;
        }
        *cur = next;
        let key = Key::Cursor { group: self.group.clone(), topic: self.topic.clone(), queue };
        batch.put(&key, next.to_be_bytes().to_vec());
    }

    pub fn get(&self, pos: Pos) -> Option<&Inflight> {
        self.inflight.get(&pos)
    }

    /// In-flight messages whose invisibility ended at or before `now`, earliest first.
    pub fn due(&self, now: Millis, limit: usize) -> Vec<Pos> {
        self.due_in(now, limit, &|_| true)
    }

    /// [`Self::due`], of the queues `serves` accepts only.
    fn due_in(&self, now: Millis, limit: usize, serves: &dyn Fn(u32) -> bool) -> Vec<Pos> {
        let due = self.due.iter().take_while(|(t, _, _)| *t <= now);
        due.filter(|(_, q, _)| serves(*q)).take(limit).map(|(_, q, o)| (*q, *o)).collect()
    }

    /// When the next in-flight message becomes due, if any.
    pub fn next_due(&self) -> Option<Millis> {
        self.next_due_in(&|_| true)
    }

    /// [`Self::next_due`], of the queues `serves` accepts only.
    pub fn next_due_in(&self, serves: &dyn Fn(u32) -> bool) -> Option<Millis> {
        self.due.iter().find(|(_, q, _)| serves(*q)).map(|(t, _, _)| *t)
    }

    /// Moves a queue's cursor to `next`, backwards too (a lite subscriber asked to start
    /// elsewhere), and records the write.
    pub fn reset_cursor(&mut self, queue: u32, next: u64, batch: &mut Batch) {
        self.cursors.insert(queue, next);
        let key = Key::Cursor { group: self.group.clone(), topic: self.topic.clone(), queue };
        batch.put(&key, next.to_be_bytes().to_vec());
    }

    /// Whether a FIFO message group has a message in flight.
    pub fn is_busy(&self, message_group: &str) -> bool {
        self.busy_groups.contains(message_group)
    }

    /// Number of messages in flight (including deferred delay messages).
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    /// Records a delivery (first or again) of the message at `pos`.
    pub fn deliver(&mut self, pos: Pos, rec: Inflight, batch: &mut Batch) {
        batch.put(&self.key(pos), rec.encode());
        self.index(pos, rec);
    }

    /// Checks that `nonce` is the current delivery of `pos`.
    pub fn check(&self, pos: Pos, nonce: u64) -> Result<&Inflight, HandleError> {
        match self.inflight.get(&pos) {
            None => Err(HandleError::NotInFlight),
            Some(r) if r.nonce != nonce || r.attempt == 0 => Err(HandleError::Stale),
            Some(r) => Ok(r),
        }
    }

    /// Acknowledges the delivery `nonce` of `pos`: the message is done for this group.
    pub fn ack(&mut self, pos: Pos, nonce: u64, batch: &mut Batch) -> Result<(), HandleError> {
        self.check(pos, nonce)?;
        self.remove(pos, batch);
        Ok(())
    }

    /// Makes the delivery `nonce` of `pos` visible again at `visible_at`, under `new_nonce`.
    /// The consumer chose the time, so broker-side auto-renewal of this delivery ends (as the
    /// reference proxy drops the handle from its renew set): when `visible_at` passes, the
    /// message is delivered again even though its consumer is alive.
    pub fn change_invisible(
        &mut self,
        pos: Pos,
        nonce: u64,
        visible_at: Millis,
        new_nonce: u64,
        batch: &mut Batch,
    ) -> Result<(), HandleError> {
        let mut rec = self.check(pos, nonce)?.clone();
        rec.visible_at = visible_at;
        rec.nonce = new_nonce;
        rec.auto_renew = false;
        self.deliver(pos, rec, batch);
        Ok(())
    }

    /// Forgets `pos` for this group (acked, dead-lettered, or its message no longer exists).
    pub fn remove(&mut self, pos: Pos, batch: &mut Batch) {
        if let Some(rec) = self.inflight.remove(&pos) {
            self.due.remove(&(rec.visible_at, pos.0, pos.1));
            if let Some(g) = &rec.message_group {
                // Only one message of a group is ever in flight, so the group is free now.
                self.busy_groups.remove(g);
            }
        }
        batch.delete(&self.key(pos));
    }

    /// Takes `pos` out of the due index without forgetting it (a dead-letter move is under way).
    /// Returns when it was due, for [`GroupTopic::unpark`] if the move fails.
    pub fn park(&mut self, pos: Pos) -> Option<Millis> {
        self.reschedule(pos, Millis::MAX)
    }

    /// Makes a parked `pos` due again at `at` (its dead-letter move failed).
    pub fn unpark(&mut self, pos: Pos, at: Millis) {
        self.reschedule(pos, at);
    }

    /// Moves `pos` in the due index (memory only: the stored record keeps its visibility).
    fn reschedule(&mut self, pos: Pos, at: Millis) -> Option<Millis> {
        let rec = self.inflight.get_mut(&pos)?;
        let before = rec.visible_at;
        self.due.remove(&(before, pos.0, pos.1));
        rec.visible_at = at;
        self.due.insert((at, pos.0, pos.1));
        Some(before)
    }

    /// In-flight positions and attempts, for inspection.
    pub fn inflight(&self) -> impl Iterator<Item = (&Pos, &Inflight)> {
        self.inflight.iter()
    }
}

/// Where a group with no cursor on a queue starts reading it.
pub fn start_offset(start: super::StartAt, q: &QueueOffsets) -> u64 {
    match start {
        super::StartAt::Earliest => q.min,
        super::StartAt::Latest => q.durable,
    }
}

/// The rules of one poll, as plain values (the caller's clock, limits and client).
pub struct PollRules<'a> {
    pub now: Millis,
    /// Most messages to hand out.
    pub batch: usize,
    /// Most delivered bytes (`StoredMessage::wire_len`) in one answer; the first message always goes.
    pub max_bytes: usize,
    /// Deliveries after which a due message is dead-lettered instead.
    pub max_attempts: u32,
    /// Invisibility of a new delivery.
    pub invisible_ms: Millis,
    /// The broker renews these deliveries while their consumer lives.
    pub auto_renew: bool,
    /// Invisibility of each renewal, and how long renewals may go on.
    pub renew_ms: Millis,
    pub renew_limit_ms: Millis,
    pub client: &'a str,
    /// Where a group with no cursor on a queue starts.
    pub start: super::StartAt,
    /// Whether a client still shows signs of life.
    pub alive: &'a dyn Fn(&str) -> bool,
    /// Whether the receive's filter accepts a message.
    pub accept: &'a dyn Fn(&StoredMessage) -> bool,
    /// Whether this receive serves a queue's due messages (a lite consumer: only the lite
    /// topics it subscribes to).
    pub serves: &'a dyn Fn(u32) -> bool,
}

/// What one poll decided.
#[derive(Debug, Default)]
pub struct Poll {
    /// Messages to hand out, each with its new in-flight record.
    pub deliveries: Vec<(Pos, StoredMessage, Inflight)>,
    /// Messages past their attempt limit, parked: move them to the dead-letter topic.
    pub dead: Vec<(Pos, StoredMessage)>,
    /// Queues whose group was behind retention: `(queue, from, to)`.
    pub skipped: Vec<(u32, u64, u64)>,
    /// The pass read [`SCAN_BUDGET`] new messages and stopped there, with more to read: poll
    /// again (the messages the filter rejected, and delay messages, count too).
    pub more: bool,
}

/// Most new messages one [`GroupTopic::poll`] reads, delivered or not: a filter that rejects a
/// long backlog is worked through a pass at a time, each holding the group's lock briefly.
pub const SCAN_BUDGET: usize = 1024;

impl GroupTopic {
    /// One pass: redeliver due messages (or renew, or dead-letter them), then hand out new ones
    /// from `queues`, starting at index `rotate` so that every queue gets served. `read` fetches
    /// a stored message (`None`: gone, e.g. expired), `nonce` makes delivery nonces. Every state
    /// change is recorded in `batch`. Rules: a due message whose message is gone is forgotten;
    /// an auto-renewed delivery of a live client is renewed (up to the renew limit); past the
    /// attempt limit a message is parked for dead-lettering; a delay message not yet due is
    /// deferred (attempt 0) and skipped; a FIFO message waits while its group has one in
    /// flight, and so does its queue; filtered-out messages are passed; a group behind
    /// retention skips ahead; the byte budget ends the answer.
    pub fn poll<E>(
        &mut self,
        rules: &PollRules<'_>,
        queues: &[QueueOffsets],
        rotate: usize,
        mut read: impl FnMut(Pos) -> Result<Option<StoredMessage>, E>,
        mut nonce: impl FnMut() -> u64,
        batch: &mut Batch,
    ) -> Result<Poll, E> {
        let now = rules.now;
        let mut out = Poll::default();
        let mut bytes = 0usize;
        let mut fresh = |attempt: u32, msg: &StoredMessage| Inflight {
            attempt,
            visible_at: now + rules.invisible_ms,
            nonce: nonce(),
            message_group: msg.msg.message_group.clone(),
            client: rules.client.to_string(),
            auto_renew: rules.auto_renew,
            delivered_at: now,
        };
        // 1. Messages whose invisibility ended (or whose delay passed).
        for pos in self.due_in(now, rules.batch, rules.serves) {
            let Some(rec) = self.get(pos).cloned() else { continue };
            let Some(msg) = read(pos)? else {
                self.remove(pos, batch);
                continue;
            };
            if rec.auto_renew
                && rec.attempt > 0
                && (rules.alive)(&rec.client)
                && now - rec.delivered_at < rules.renew_limit_ms
            {
                self.deliver(pos, Inflight { visible_at: now + rules.renew_ms, ..rec }, batch);
                continue;
            }
            if rec.attempt >= rules.max_attempts {
                self.park(pos);
                out.dead.push((pos, msg));
                continue;
            }
            if !out.deliveries.is_empty() && bytes + msg.wire_len() > rules.max_bytes {
                break;
            }
            let rec = fresh(rec.attempt + 1, &msg);
            bytes += msg.wire_len();
            self.deliver(pos, rec.clone(), batch);
            out.deliveries.push((pos, msg, rec));
        }
        // 2. New messages.
        let n = queues.len();
        let mut read_new = 0;
        'queues: for i in 0..n {
            if out.deliveries.len() >= rules.batch {
                break;
            }
            let offsets = &queues[(rotate + i) % n];
            let q = offsets.queue;
            let before = self.cursor(q);
            let mut cur = before.unwrap_or_else(|| start_offset(rules.start, offsets));
            if cur < offsets.min {
                out.skipped.push((q, cur, offsets.min));
                cur = offsets.min;
            }
            while out.deliveries.len() < rules.batch && cur < offsets.durable {
                if read_new == SCAN_BUDGET {
                    out.more = true;
                    if before != Some(cur) {
                        self.set_cursor(q, cur, batch);
                    }
                    break 'queues;
                }
                read_new += 1;
                let Some(msg) = read((q, cur))? else {
                    cur += 1;
                    continue;
                };
                if !(rules.accept)(&msg) {
                    cur += 1;
                    continue;
                }
                if let Some(at) = msg.msg.delivery_timestamp.filter(|at| *at > now) {
                    let deferred = Inflight { attempt: 0, visible_at: at, nonce: 0, ..fresh(0, &msg) };
                    self.deliver((q, cur), deferred, batch);
                    cur += 1;
                    continue;
                }
                if msg.msg.message_group.as_deref().is_some_and(|g| self.is_busy(g)) {
                    break; // FIFO: this queue waits until the group's message is acked
                }
                if !out.deliveries.is_empty() && bytes + msg.wire_len() > rules.max_bytes {
                    if before != Some(cur) {
                        self.set_cursor(q, cur, batch);
                    }
                    break 'queues;
                }
                let rec = fresh(1, &msg);
                bytes += msg.wire_len();
                self.deliver((q, cur), rec.clone(), batch);
                out.deliveries.push(((q, cur), msg, rec));
                cur += 1;
            }
            if before != Some(cur) {
                self.set_cursor(q, cur, batch);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(attempt: u32, visible_at: Millis, nonce: u64, group: Option<&str>) -> Inflight {
        Inflight {
            attempt,
            visible_at,
            nonce,
            message_group: group.map(str::to_string),
            client: "c".into(),
            auto_renew: false,
            delivered_at: 0,
        }
    }

    #[test]
    fn deliver_then_ack_forgets_the_message() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.deliver((0, 5), rec(1, 100, 7, None), &mut b);
        assert_eq!(s.due(99, 10), vec![]);
        assert_eq!(s.due(100, 10), vec![(0, 5)]);
        assert_eq!(s.ack((0, 5), 8, &mut b), Err(HandleError::Stale));
        assert_eq!(s.ack((0, 5), 7, &mut b), Ok(()));
        assert_eq!(s.ack((0, 5), 7, &mut b), Err(HandleError::NotInFlight));
        assert_eq!(s.inflight_count(), 0);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn redelivery_replaces_the_handle() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.deliver((1, 1), rec(1, 100, 1, None), &mut b);
        s.deliver((1, 1), rec(2, 300, 2, None), &mut b);
        assert_eq!(s.due(200, 10), vec![]);
        assert_eq!(s.check((1, 1), 1).unwrap_err(), HandleError::Stale);
        assert_eq!(s.check((1, 1), 2).unwrap().attempt, 2);
    }

    #[test]
    fn deferred_delay_messages_cannot_be_acked() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.deliver((0, 0), rec(0, 1000, 0, None), &mut b);
        assert_eq!(s.ack((0, 0), 0, &mut b), Err(HandleError::Stale));
        assert_eq!(s.due(1000, 1), vec![(0, 0)]);
    }

    #[test]
    fn fifo_groups_stay_busy_until_acked() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.deliver((0, 0), rec(1, 10, 1, Some("order-1")), &mut b);
        assert!(s.is_busy("order-1"));
        s.change_invisible((0, 0), 1, 50, 2, &mut b).unwrap();
        assert!(s.is_busy("order-1"), "invisibility changes keep the group busy");
        s.ack((0, 0), 2, &mut b).unwrap();
        assert!(!s.is_busy("order-1"));
    }

    #[test]
    fn changing_invisibility_ends_auto_renewal() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.deliver((0, 0), Inflight { auto_renew: true, ..rec(1, 60_000, 1, None) }, &mut b);
        s.change_invisible((0, 0), 1, 1000, 2, &mut b).unwrap();
        assert!(!s.get((0, 0)).unwrap().auto_renew);
        assert_eq!(s.due(1000, 1), vec![(0, 0)]);
    }

    #[test]
    fn cursors_never_move_backwards() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.set_cursor(0, 10, &mut b);
        s.set_cursor(0, 4, &mut b);
        assert_eq!(s.cursor(0), Some(10));
        assert_eq!(b.len(), 1);
    }

    /// A queue of stored messages for `poll`: `(offset, message group, delivery time, tag)`.
    /// `(offset, message group, delivery time, tag)` of a stored test message.
    type Spec<'a> = (u64, Option<&'a str>, Option<Millis>, Option<&'a str>);

    fn stored(q: u32, specs: &[Spec<'_>]) -> HashMap<Pos, StoredMessage> {
        specs
            .iter()
            .map(|(o, group, at, tag)| {
                let mut msg = crate::model::tests::sample_message("t", &format!("m{o}"));
                msg.message_group = group.map(str::to_string);
                msg.delivery_timestamp = *at;
                msg.tag = tag.map(str::to_string);
                let m = StoredMessage {
                    msg,
                    queue: q,
                    offset: *o,
                    store_timestamp: 0,
                    producer: "p".into(),
                    body_md5: String::new(),
                };
                ((q, *o), m)
            })
            .collect()
    }

    fn run_poll(
        s: &mut GroupTopic,
        log: &HashMap<Pos, StoredMessage>,
        queues: &[QueueOffsets],
        rules: &PollRules<'_>,
    ) -> Poll {
        let mut n = 100;
        let mut b = Batch::new();
        s.poll::<()>(
            rules,
            queues,
            0,
            |p| Ok(log.get(&p).cloned()),
            || {
                n += 1;
                n
            },
            &mut b,
        )
        .unwrap()
    }

    fn offsets(queue: u32, min: u64, durable: u64) -> QueueOffsets {
        QueueOffsets { queue, min, durable }
    }

    fn ids(p: &Poll) -> Vec<String> {
        p.deliveries.iter().map(|(_, m, _)| m.msg.message_id.clone()).collect()
    }

    const LIVE: &dyn Fn(&str) -> bool = &|_| true;
    const ALL: &dyn Fn(&StoredMessage) -> bool = &|_| true;

    fn rules(now: Millis) -> PollRules<'static> {
        PollRules {
            now,
            batch: 32,
            max_bytes: usize::MAX,
            max_attempts: 3,
            invisible_ms: 1000,
            auto_renew: false,
            renew_ms: 60_000,
            renew_limit_ms: 3_600_000,
            client: "c",
            start: crate::consume::StartAt::Earliest,
            alive: LIVE,
            accept: ALL,
            serves: &|_| true,
        }
    }

    #[test]
    fn poll_defers_delays_blocks_fifo_groups_and_filters() {
        let mut s = GroupTopic::new("g", "t");
        let log = stored(0, &[(0, Some("o1"), None, None), (1, Some("o1"), None, None), (2, None, None, None)]);
        let mut log1 =
            stored(1, &[(0, None, Some(5000), None), (1, None, None, Some("skip")), (2, None, None, Some("keep"))]);
        log1.extend(log);
        let queues = [offsets(0, 0, 3), offsets(1, 0, 3)];
        let keep: &dyn Fn(&StoredMessage) -> bool = &|m| m.msg.tag.as_deref() != Some("skip");
        let r = PollRules { accept: keep, ..rules(1000) };
        let p = run_poll(&mut s, &log1, &queues, &r);
        // Queue 0 stops at o1's second message (its group is busy); queue 1 defers the delay
        // message and passes the filtered one.
        assert_eq!(ids(&p), ["m0", "m2"]);
        assert_eq!((s.cursor(0), s.cursor(1)), (Some(1), Some(3)));
        assert_eq!(s.get((1, 0)).map(|r| (r.attempt, r.visible_at)), Some((0, 5000)));
        // Once o1's message is acked, the next of its group goes; at 5000 the delay message does.
        let nonce = s.get((0, 0)).unwrap().nonce;
        s.ack((0, 0), nonce, &mut Batch::new()).unwrap();
        let p = run_poll(&mut s, &log1, &queues, &rules(5000));
        let mut got = ids(&p);
        got.sort();
        // The due delay message (queue 1, m0), then queue 0 behind o1: its second message and
        // m2 (which had waited behind the busy group), and queue 1's m2 again (never acked, its
        // 1 s invisibility ended at 2000).
        assert_eq!(got, ["m0", "m1", "m2", "m2"]);
        let mut attempts: Vec<(Pos, u32)> = p.deliveries.iter().map(|(pos, _, r)| (*pos, r.attempt)).collect();
        attempts.sort();
        assert_eq!(attempts, [((0, 1), 1), ((0, 2), 1), ((1, 0), 1), ((1, 2), 2)]);
    }

    #[test]
    fn a_filter_rejecting_a_long_backlog_is_read_a_budget_at_a_time() {
        let mut s = GroupTopic::new("g", "t");
        let total = 2 * SCAN_BUDGET as u64 + 10;
        let specs: Vec<Spec<'_>> =
            (0..total).map(|o| (o, None, None, Some(if o == total - 1 { "keep" } else { "skip" }))).collect();
        let log = stored(0, &specs);
        let queues = [offsets(0, 0, total)];
        let keep: &dyn Fn(&StoredMessage) -> bool = &|m| m.msg.tag.as_deref() == Some("keep");
        let r = PollRules { accept: keep, ..rules(0) };
        let mut passes = 0;
        let p = loop {
            let before = s.cursor(0).unwrap_or(0);
            let p = run_poll(&mut s, &log, &queues, &r);
            passes += 1;
            assert!(s.cursor(0).unwrap() - before <= SCAN_BUDGET as u64, "read past the budget");
            if !p.more {
                break p;
            }
            assert!(p.deliveries.is_empty());
        };
        assert_eq!((passes, ids(&p)), (3, vec![format!("m{}", total - 1)]));
        assert_eq!(s.cursor(0), Some(total));
    }

    #[test]
    fn poll_redelivers_renews_and_dead_letters() {
        let mut s = GroupTopic::new("g", "t");
        let log = stored(0, &[(0, None, None, None), (1, None, None, None)]);
        let queues = [offsets(0, 0, 2)];
        let renewing = PollRules { auto_renew: true, ..rules(0) };
        run_poll(&mut s, &log, &queues, &renewing);
        // Due at 1000: auto-renewed for a live client, so not delivered again.
        let p = run_poll(&mut s, &log, &queues, &rules(1000));
        assert!(p.deliveries.is_empty());
        assert_eq!(s.get((0, 0)).unwrap().visible_at, 61_000);
        // A dead client's deliveries come back, attempt 2, then 3, then dead-lettered.
        let gone: &dyn Fn(&str) -> bool = &|_| false;
        let p = run_poll(&mut s, &log, &queues, &PollRules { alive: gone, ..rules(61_000) });
        assert_eq!(p.deliveries.iter().map(|(_, _, r)| r.attempt).collect::<Vec<_>>(), [2, 2]);
        let p = run_poll(&mut s, &log, &queues, &rules(62_000));
        assert_eq!(p.deliveries.iter().map(|(_, _, r)| r.attempt).collect::<Vec<_>>(), [3, 3]);
        let p = run_poll(&mut s, &log, &queues, &rules(63_000));
        assert!(p.deliveries.is_empty());
        assert_eq!(p.dead.len(), 2);
        assert_eq!(s.next_due(), Some(Millis::MAX), "parked while the move runs");
    }

    #[test]
    fn poll_skips_ahead_past_retention_and_keeps_the_cursor_when_the_byte_budget_ends_it() {
        let mut s = GroupTopic::new("g", "t");
        let mut b = Batch::new();
        s.set_cursor(0, 2, &mut b);
        let log = stored(0, &[(5, None, None, None), (6, None, None, None), (7, None, None, None)]);
        let one = log[&(0, 5)].wire_len();
        let r = PollRules { max_bytes: one * 2, ..rules(0) };
        let p = run_poll(&mut s, &log, &[offsets(0, 5, 8)], &r);
        assert_eq!(p.skipped, vec![(0, 2, 5)]);
        assert_eq!(ids(&p), ["m5", "m6"]);
        assert_eq!(s.cursor(0), Some(7), "the byte budget ended the answer after m6: m7 is next");
        let p = run_poll(&mut s, &log, &[offsets(0, 5, 8)], &rules(0));
        assert_eq!(ids(&p), ["m7"], "nothing delivered twice");
    }

    #[test]
    fn a_latest_group_starts_at_the_end() {
        let mut s = GroupTopic::new("g", "t");
        let log = stored(0, &[(0, None, None, None), (1, None, None, None)]);
        let r = PollRules { start: crate::consume::StartAt::Latest, ..rules(0) };
        let p = run_poll(&mut s, &log, &[offsets(0, 0, 2)], &r);
        assert!(p.deliveries.is_empty());
        assert_eq!(s.cursor(0), Some(2));
    }

    proptest! {
        /// Under any sequence of deliveries, acks and invisibility changes, the due index holds
        /// exactly one entry per in-flight message, at its current visibility time.
        #[test]
        fn due_index_matches_inflight(ops in proptest::collection::vec((0u8..4, 0u64..6, 0i64..1000), 1..60)) {
            let mut s = GroupTopic::new("g", "t");
            let mut b = Batch::new();
            let mut nonce = 0u64;
            for (op, offset, t) in ops {
                let pos = (0, offset);
                nonce += 1;
                match op {
                    0 => s.deliver(pos, rec(1, t, nonce, None), &mut b),
                    1 => { let n = s.get(pos).map(|r| r.nonce).unwrap_or(0); let _ = s.ack(pos, n, &mut b); }
                    2 => { let n = s.get(pos).map(|r| r.nonce).unwrap_or(0); let _ = s.change_invisible(pos, n, t, nonce, &mut b); }
                    _ => s.remove(pos, &mut b),
                }
                prop_assert_eq!(s.due.len(), s.inflight.len());
                for (p, r) in &s.inflight {
                    prop_assert!(s.due.contains(&(r.visible_at, p.0, p.1)));
                }
            }
        }

        #[test]
        fn inflight_records_roundtrip(attempt in any::<u32>(), at in any::<i64>(), nonce in any::<u64>(), g in proptest::option::of("[a-z]{1,5}")) {
            let r = Inflight { attempt, visible_at: at, nonce, message_group: g, client: "x".into(), auto_renew: true, delivered_at: at };
            prop_assert_eq!(Inflight::decode(&r.encode()).unwrap(), r);
        }
    }
}
