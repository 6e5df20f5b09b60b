//! The lifecycle of one transaction (half message) as a pure state machine. Time is an input.
//!
//! ```text
//!            commit (producer, check, operator)
//!   Pending ─────────────────────────────────────▶ Committed   (message appended once)
//!      │  │  rollback (producer, check, operator)
//!      │  └──────────────────────────────────────▶ RolledBack
//!      │ max checks, policy = rollback ──────────▶ RolledBack (by policy)
//!      └ max checks, policy = park ──▶ Parked ──resume──▶ Pending (checks start over)
//!                                        └─ commit / rollback ─▶ Committed / RolledBack
//! ```
//! The first terminal decision wins: repeating it is accepted and changes nothing; the
//! contrary decision is refused. "Unknown" answers never change the state.

use crate::model::Millis;

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// Waiting for a decision; checked back when due.
    Pending,
    Committed,
    RolledBack,
    /// Out of checks under the `park` policy: waits for an operator (or a late producer).
    Parked,
}

impl TxnState {
    pub fn is_final(self) -> bool {
        matches!(self, TxnState::Committed | TxnState::RolledBack)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Pending => "pending",
            TxnState::Committed => "committed",
            TxnState::RolledBack => "rolled-back",
            TxnState::Parked => "parked",
        }
    }
}

/// A producer's or checker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    Commit,
    Rollback,
    /// Not decided yet (RocketMQ's UNSPECIFIED / the Rust client's UNKNOWN).
    Unknown,
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The producer, on its own (EndTransaction from the client).
    Producer,
    /// A producer answering a check-back.
    Check,
    /// An operator through the admin API.
    Operator,
    /// The max-checks policy.
    Policy,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Producer => "producer",
            Actor::Check => "check",
            Actor::Operator => "operator",
            Actor::Policy => "policy",
        }
    }
}

/// One entry of a transaction's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The half message was stored.
    Sent {
        at: Millis,
        client: String,
    },
    /// A check was written to Telemetry stream `stream` of `client`; `answer` once it came back.
    Checked {
        at: Millis,
        client: String,
        stream: u64,
        answer: Option<(Resolution, Millis)>,
    },
    /// Checks found no live producer stream from `since` on; `attempts` so far, the latest at
    /// `last`. One entry per run of failed attempts, updated in place.
    Unreachable {
        since: Millis,
        attempts: u32,
        last: Millis,
    },
    /// An answer or decision that did not change the state (unknown, or a repeat).
    Answered {
        at: Millis,
        resolution: Resolution,
        by: Actor,
    },
    /// The state became final (or parked) by `by`.
    Decided {
        at: Millis,
        resolution: Resolution,
        by: Actor,
        reason: Option<String>,
    },
    Parked {
        at: Millis,
    },
    Resumed {
        at: Millis,
        reason: Option<String>,
    },
}

/// Most timeline entries kept; older ones after the first are dropped (bounded records).
pub const MAX_HISTORY: usize = 64;

/// Why an end or an operator action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// The transaction already ended the other way.
    Contrary { state: TxnState },
    /// Resume only applies to parked transactions.
    NotParked { state: TxnState },
}

/// What the caller must do after a successful [`Txn::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Append the message to its topic now (in the same write as the new state).
    Publish,
    /// The state changed; nothing to publish.
    Discard,
    /// Nothing changed (repeat or unknown); only the timeline may have grown.
    None,
}

/// A transaction's state and timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub id: String,
    pub topic: String,
    pub message_id: String,
    /// Client id of the producer that sent the half message.
    pub producer: String,
    pub created_at: Millis,
    pub state: TxnState,
    /// Checks written to a live stream so far (in the current pending run).
    pub checks: u32,
    /// When the next check is due (pending only).
    pub next_check: Option<Millis>,
    /// When the state became final.
    pub resolved_at: Option<Millis>,
    /// Since when checks have found no live producer (`None` once one was reached).
    pub unreachable_since: Option<Millis>,
    /// Check attempts that found no live producer since `unreachable_since`.
    pub unreachable_attempts: u32,
    pub history: Vec<Event>,
}

/// First pause after a check found no producer; it doubles per attempt up to the check
/// interval, so transactions nobody can answer cost few writes.
pub const UNREACHABLE_BACKOFF_MS: Millis = 1000;

impl Txn {
    /// A new pending transaction, first checked at `first_check`.
    pub fn new(
        id: String,
        topic: String,
        message_id: String,
        producer: String,
        now: Millis,
        first_check: Millis,
    ) -> Self {
        let history = vec![Event::Sent { at: now, client: producer.clone() }];
        Txn {
            id,
            topic,
            message_id,
            producer,
            created_at: now,
            state: TxnState::Pending,
            checks: 0,
            next_check: Some(first_check),
            resolved_at: None,
            unreachable_since: None,
            unreachable_attempts: 0,
            history,
        }
    }

    fn push(&mut self, e: Event) {
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push(e);
    }

    /// Applies a decision or an answer. A check's answer is also written into the pending
    /// `Checked` entry, with its latency.
    pub fn end(
        &mut self,
        resolution: Resolution,
        by: Actor,
        reason: Option<String>,
        now: Millis,
    ) -> Result<Effect, TxnError> {
        if by == Actor::Check {
            if let Some(Event::Checked { at, answer, .. }) =
                self.history.iter_mut().rev().find(|e| matches!(e, Event::Checked { answer: None, .. }))
            {
                *answer = Some((resolution, now - *at));
            }
        }
        let target = match resolution {
            Resolution::Commit => TxnState::Committed,
            Resolution::Rollback => TxnState::RolledBack,
            Resolution::Unknown => {
                if by != Actor::Check {
                    self.push(Event::Answered { at: now, resolution, by });
                }
                return Ok(Effect::None);
            }
        };
        match self.state {
            s if s == target => {
                self.push(Event::Answered { at: now, resolution, by });
                Ok(Effect::None)
            }
            s if s.is_final() => Err(TxnError::Contrary { state: s }),
            _ => {
                self.state = target;
                self.next_check = None;
                self.resolved_at = Some(now);
                self.push(Event::Decided { at: now, resolution, by, reason });
                Ok(if target == TxnState::Committed { Effect::Publish } else { Effect::Discard })
            }
        }
    }

    /// Whether a check is due at `now`.
    pub fn is_due(&self, now: Millis) -> bool {
        self.state == TxnState::Pending && self.next_check.is_some_and(|t| t <= now)
    }

    /// Records a check written to stream `stream` of `client`; the next one is due after
    /// `interval`.
    pub fn checked(&mut self, client: &str, stream: u64, now: Millis, interval: Millis) {
        self.checks += 1;
        self.next_check = Some(now + interval);
        self.unreachable_since = None;
        self.unreachable_attempts = 0;
        self.push(Event::Checked { at: now, client: client.to_string(), stream, answer: None });
    }

    /// The clients whose checks brought no decision (unanswered, or answered UNKNOWN), each
    /// once, the most recent last: the next check tries the other producers first, then these
    /// from the least recent. Another producer of the topic may keep its outcomes where this
    /// one cannot see them (another database), so asking the same one again may never end.
    pub fn undecided_checks(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.history {
            if let Event::Checked { client, answer: None | Some((Resolution::Unknown, _)), .. } = e {
                out.retain(|c| *c != client.as_str());
                out.push(client);
            }
        }
        out
    }

    /// No producer could be reached at `now`: the next attempt waits [`UNREACHABLE_BACKOFF_MS`],
    /// doubling per attempt up to `interval`, and never past `since + max_age`, when the policy
    /// applies (see [`Txn::unreachable_too_long`]). Checks are not counted.
    pub fn unreachable(&mut self, now: Millis, interval: Millis, max_age: Millis) {
        let since = *self.unreachable_since.get_or_insert(now);
        self.unreachable_attempts = self.unreachable_attempts.saturating_add(1);
        let shift = (self.unreachable_attempts - 1).min(20);
        let backoff = UNREACHABLE_BACKOFF_MS.saturating_mul(1 << shift).min(interval.max(1));
        self.next_check = Some((now + backoff).min(since.saturating_add(max_age)).max(now + 1));
        let attempts = self.unreachable_attempts;
        match self.history.last_mut() {
            Some(Event::Unreachable { since: s, attempts: a, last }) if *s == since => {
                *a = attempts;
                *last = now;
            }
            _ => self.push(Event::Unreachable { since, attempts, last: now }),
        }
    }

    /// Whether checks have found no producer for `max_age` or longer.
    pub fn unreachable_too_long(&self, now: Millis, max_age: Millis) -> bool {
        self.unreachable_since.is_some_and(|since| now - since >= max_age)
    }

    /// Applies the max-checks policy: roll back, or park for an operator. `why` is recorded.
    pub fn exhaust(&mut self, park: bool, why: String, now: Millis) -> Effect {
        self.unreachable_since = None;
        self.unreachable_attempts = 0;
        if park {
            self.state = TxnState::Parked;
            self.next_check = None;
            self.push(Event::Parked { at: now });
            Effect::None
        } else {
            self.state = TxnState::RolledBack;
            self.next_check = None;
            self.resolved_at = Some(now);
            self.push(Event::Decided {
                at: now,
                resolution: Resolution::Rollback,
                by: Actor::Policy,
                reason: Some(why),
            });
            Effect::Discard
        }
    }

    /// Operator resume of a parked transaction: checks start over now.
    pub fn resume(&mut self, reason: Option<String>, now: Millis) -> Result<(), TxnError> {
        if self.state != TxnState::Parked {
            return Err(TxnError::NotParked { state: self.state });
        }
        self.state = TxnState::Pending;
        self.checks = 0;
        self.next_check = Some(now);
        self.push(Event::Resumed { at: now, reason });
        Ok(())
    }

    /// The last answer a check got, if any.
    pub fn last_answer(&self) -> Option<Resolution> {
        self.history.iter().rev().find_map(|e| match e {
            Event::Checked { answer: Some((r, _)), .. } => Some(*r),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txn() -> Txn {
        Txn::new("t1".into(), "orders".into(), "m1".into(), "p1".into(), 1000, 7000)
    }

    #[test]
    fn commit_publishes_once_and_repeats_change_nothing() {
        let mut t = txn();
        assert_eq!(t.end(Resolution::Commit, Actor::Producer, None, 2000), Ok(Effect::Publish));
        assert_eq!(t.end(Resolution::Commit, Actor::Check, None, 3000), Ok(Effect::None));
        assert_eq!(
            t.end(Resolution::Rollback, Actor::Producer, None, 4000),
            Err(TxnError::Contrary { state: TxnState::Committed })
        );
        assert_eq!(t.state, TxnState::Committed);
        assert_eq!(t.resolved_at, Some(2000));
        assert!(!t.is_due(100_000));
    }

    #[test]
    fn unknown_keeps_it_pending_and_checks_record_answers() {
        let mut t = txn();
        assert!(!t.is_due(6999));
        assert!(t.is_due(7000));
        t.checked("p1", 3, 7000, 30_000);
        assert_eq!(t.end(Resolution::Unknown, Actor::Check, None, 7005), Ok(Effect::None));
        assert_eq!(t.state, TxnState::Pending);
        assert_eq!(t.last_answer(), Some(Resolution::Unknown));
        assert!(matches!(t.history.last(), Some(Event::Checked { answer: Some((Resolution::Unknown, 5)), .. })));
        assert_eq!(t.next_check, Some(37_000));
    }

    #[test]
    fn exhausted_checks_roll_back_or_park() {
        let mut t = txn();
        assert_eq!(t.exhaust(false, "no decision".into(), 9000), Effect::Discard);
        assert_eq!(t.state, TxnState::RolledBack);
        assert!(matches!(t.history.last(), Some(Event::Decided { by: Actor::Policy, .. })));

        let mut t = txn();
        t.checked("p1", 1, 7000, 1000);
        assert_eq!(t.exhaust(true, "no decision".into(), 9000), Effect::None);
        assert_eq!(t.state, TxnState::Parked);
        assert!(!t.is_due(Millis::MAX));
        t.resume(Some("db fixed".into()), 10_000).unwrap();
        assert_eq!((t.state, t.checks, t.next_check), (TxnState::Pending, 0, Some(10_000)));
        assert_eq!(t.resume(None, 11_000), Err(TxnError::NotParked { state: TxnState::Pending }));
    }

    #[test]
    fn a_parked_transaction_can_still_be_decided() {
        let mut t = txn();
        t.exhaust(true, "no decision".into(), 9000);
        assert_eq!(
            t.end(Resolution::Commit, Actor::Operator, Some("checked the ledger".into()), 9500),
            Ok(Effect::Publish)
        );
        assert_eq!(t.state, TxnState::Committed);
    }

    #[test]
    fn unreachable_producers_back_off_without_using_up_checks() {
        let mut t = txn();
        let (interval, max_age) = (8_000, 12_000);
        let mut at = 7000;
        let mut waits = Vec::new();
        while !t.unreachable_too_long(at, max_age) {
            t.unreachable(at, interval, max_age);
            let next = t.next_check.unwrap();
            waits.push(next - at);
            at = next;
        }
        // 1 s, 2 s, 4 s, then the interval cap, cut short where the policy applies (age 12 s).
        assert_eq!(waits, vec![1000, 2000, 4000, 5000]);
        assert_eq!(t.checks, 0);
        assert!(matches!(t.history.last(), Some(Event::Unreachable { since: 7000, attempts: 4, last: 14_000 })));
        assert_eq!(t.history.len(), 2, "one timeline entry per run of failed attempts");
        t.checked("p2", 9, at, interval);
        assert_eq!((t.unreachable_since, t.unreachable_attempts), (None, 0));
        assert_eq!(t.undecided_checks(), ["p2"]);
        t.end(Resolution::Unknown, Actor::Check, None, at + 5).unwrap();
        assert_eq!(t.undecided_checks(), ["p2"], "an UNKNOWN answer decides nothing either");
        t.checked("p3", 4, at + 10, interval);
        t.checked("p2", 9, at + 20, interval);
        assert_eq!(t.undecided_checks(), ["p3", "p2"], "each once, the most recent last");
    }

    fn any_resolution() -> impl Strategy<Value = Resolution> {
        prop_oneof![Just(Resolution::Commit), Just(Resolution::Rollback), Just(Resolution::Unknown)]
    }

    fn any_actor() -> impl Strategy<Value = Actor> {
        prop_oneof![Just(Actor::Producer), Just(Actor::Check), Just(Actor::Operator)]
    }

    proptest! {
        /// Whatever arrives in whatever order, the message is published at most once, the first
        /// terminal decision is the final state, and history stays bounded.
        #[test]
        fn first_terminal_decision_wins(ops in proptest::collection::vec((any_resolution(), any_actor(), 0u8..4), 1..80)) {
            let mut t = txn();
            let mut now = 1000;
            let mut publishes = 0;
            let mut first_final: Option<TxnState> = None;
            for (r, a, extra) in ops {
                now += 10;
                match extra {
                    0 => t.checked("p", 1, now, 100),
                    1 if t.state == TxnState::Pending => { t.exhaust(true, String::new(), now); }
                    2 => { let _ = t.resume(None, now); }
                    _ => {}
                }
                let before = t.state;
                match t.end(r, a, None, now) {
                    Ok(Effect::Publish) => publishes += 1,
                    Ok(_) => {}
                    Err(TxnError::Contrary { state }) => prop_assert!(state.is_final() && state == before),
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
                if first_final.is_none() && t.state.is_final() {
                    first_final = Some(t.state);
                }
                if let Some(f) = first_final {
                    prop_assert_eq!(t.state, f);
                }
                prop_assert!(t.history.len() <= MAX_HISTORY);
            }
            prop_assert!(publishes <= 1);
            prop_assert_eq!(publishes == 1, first_final == Some(TxnState::Committed));
        }
    }
}
