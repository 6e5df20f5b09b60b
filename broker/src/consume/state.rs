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

use crate::codec::{CodecError, Decoder, Encoder};
use crate::model::Millis;
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

const INFLIGHT_VERSION: u8 = 1;

impl Inflight {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(INFLIGHT_VERSION)
            .u32(self.attempt)
            .i64(self.visible_at)
            .u64(self.nonce)
            .opt_str(self.message_group.as_deref())
            .str(&self.client)
            .bool(self.auto_renew)
            .i64(self.delivered_at);
        e.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut d = Decoder::new(bytes);
        match d.u8()? {
            INFLIGHT_VERSION => {}
            v => return Err(crate::codec::invalid("in-flight record version", v)),
        }
        let r = Inflight {
            attempt: d.u32()?,
            visible_at: d.i64()?,
            nonce: d.u64()?,
            message_group: d.opt_str()?,
            client: d.str()?,
            auto_renew: d.bool()?,
            delivered_at: d.i64()?,
        };
        d.finish()?;
        Ok(r)
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
        self.due.iter().take_while(|(t, _, _)| *t <= now).take(limit).map(|(_, q, o)| (*q, *o)).collect()
    }

    /// When the next in-flight message becomes due, if any.
    pub fn next_due(&self) -> Option<Millis> {
        self.due.iter().next().map(|(t, _, _)| *t)
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
