//! Transactional (half) messages.
//!
//! A TRANSACTION send stores a *half message*, invisible to every consumer group, and a
//! transaction record keyed by a broker-made transaction id. The producer runs its local
//! transaction, then ends it with EndTransaction: COMMIT appends the message to its topic — the
//! record's new state and the queue append are one atomic, fsynced write, so it is visible
//! exactly once — and ROLLBACK discards it. A producer that never decides is *checked back*:
//! when a pending transaction is due, the broker writes a `RecoverOrphanedTransactionCommand`
//! on a live Telemetry stream (the sending producer first, else any live producer of the
//! topic), and the producer's checker answers with EndTransaction. Checks repeat every check
//! interval up to the max checks, then the policy rolls back or parks the transaction for an
//! operator. Every step is kept in the transaction's timeline.
//!
//! Unlike the reference broker (docs/protocol.md §6), state lives in one authoritative record
//! per transaction (no op log to reconcile), checks are scheduled by a due-time index (never a
//! scan of all half messages), a check only counts when it reached a live stream, and a late
//! commit resolves the transaction whatever checks did before.
//!
//! # Layout
//! - [`state`]: the pure lifecycle (`Txn`), with unit and property tests.
//! - [`service`]: half sends, EndTransaction, the check step and operator actions (async).

pub mod service;
pub mod state;

use crate::codec::{invalid, CodecError, Decoder, Encoder, Record};
use state::{Actor, Event, Resolution, Txn, TxnState};

/// The code of a state in records and in the `TxnOpen` index.
pub fn state_to_u8(s: TxnState) -> u8 {
    match s {
        TxnState::Pending => 1,
        TxnState::Committed => 2,
        TxnState::RolledBack => 3,
        TxnState::Parked => 4,
    }
}

fn state_from_u8(v: u8) -> Result<TxnState, CodecError> {
    Ok(match v {
        1 => TxnState::Pending,
        2 => TxnState::Committed,
        3 => TxnState::RolledBack,
        4 => TxnState::Parked,
        o => return Err(invalid("transaction state", o)),
    })
}

fn resolution_to_u8(r: Resolution) -> u8 {
    match r {
        Resolution::Commit => 1,
        Resolution::Rollback => 2,
        Resolution::Unknown => 3,
    }
}

fn resolution_from_u8(v: u8) -> Result<Resolution, CodecError> {
    Ok(match v {
        1 => Resolution::Commit,
        2 => Resolution::Rollback,
        3 => Resolution::Unknown,
        o => return Err(invalid("resolution", o)),
    })
}

fn actor_to_u8(a: Actor) -> u8 {
    match a {
        Actor::Producer => 1,
        Actor::Check => 2,
        Actor::Operator => 3,
        Actor::Policy => 4,
    }
}

fn actor_from_u8(v: u8) -> Result<Actor, CodecError> {
    Ok(match v {
        1 => Actor::Producer,
        2 => Actor::Check,
        3 => Actor::Operator,
        4 => Actor::Policy,
        o => return Err(invalid("actor", o)),
    })
}

fn encode_event(e: &mut Encoder, ev: &Event) {
    match ev {
        Event::Sent { at, client } => {
            e.u8(1).i64(*at).str(client);
        }
        Event::Checked { at, client, stream, answer } => {
            e.u8(7).i64(*at).str(client).u64(*stream);
            match answer {
                Some((r, latency)) => e.u8(1).u8(resolution_to_u8(*r)).i64(*latency),
                None => e.u8(0),
            };
        }
        Event::Answered { at, resolution, by } => {
            e.u8(3).i64(*at).u8(resolution_to_u8(*resolution)).u8(actor_to_u8(*by));
        }
        Event::Decided { at, resolution, by, reason } => {
            e.u8(4).i64(*at).u8(resolution_to_u8(*resolution)).u8(actor_to_u8(*by)).opt_str(reason.as_deref());
        }
        Event::Parked { at } => {
            e.u8(5).i64(*at);
        }
        Event::Resumed { at, reason } => {
            e.u8(6).i64(*at).opt_str(reason.as_deref());
        }
        Event::Unreachable { since, attempts, last } => {
            e.u8(8).i64(*since).u32(*attempts).i64(*last);
        }
    }
}

fn decode_event(d: &mut Decoder<'_>) -> Result<Event, CodecError> {
    Ok(match d.u8()? {
        1 => Event::Sent { at: d.i64()?, client: d.str()? },
        // 2: a check before stream ids were recorded (stream 0 = unknown); 7: with its stream.
        tag @ (2 | 7) => {
            let (at, client) = (d.i64()?, d.str()?);
            let stream = if tag == 7 { d.u64()? } else { 0 };
            let answer = if d.bool()? { Some((resolution_from_u8(d.u8()?)?, d.i64()?)) } else { None };
            Event::Checked { at, client, stream, answer }
        }
        3 => Event::Answered { at: d.i64()?, resolution: resolution_from_u8(d.u8()?)?, by: actor_from_u8(d.u8()?)? },
        4 => Event::Decided {
            at: d.i64()?,
            resolution: resolution_from_u8(d.u8()?)?,
            by: actor_from_u8(d.u8()?)?,
            reason: d.opt_str()?,
        },
        5 => Event::Parked { at: d.i64()? },
        6 => Event::Resumed { at: d.i64()?, reason: d.opt_str()? },
        8 => Event::Unreachable { since: d.i64()?, attempts: d.u32()?, last: d.i64()? },
        o => return Err(invalid("timeline event", o)),
    })
}

/// Version 2 adds the unreachable run; version 1 records are still read.
impl Record for Txn {
    const KIND: &'static str = "transaction record";
    const VERSION: u8 = 2;
    const OLDEST: u8 = 1;

    fn write(&self, e: &mut Encoder) {
        let t = self;
        e.str(&t.id)
            .str(&t.topic)
            .str(&t.message_id)
            .str(&t.producer)
            .i64(t.created_at)
            .u8(state_to_u8(t.state))
            .u32(t.checks)
            .opt_i64(t.next_check)
            .opt_i64(t.resolved_at)
            .u32(t.history.len() as u32);
        for ev in &t.history {
            encode_event(e, ev);
        }
        e.opt_i64(t.unreachable_since).u32(t.unreachable_attempts);
    }

    fn read(d: &mut Decoder<'_>, version: u8) -> Result<Self, CodecError> {
        let mut t = Txn {
            id: d.str()?,
            topic: d.str()?,
            message_id: d.str()?,
            producer: d.str()?,
            created_at: d.i64()?,
            state: state_from_u8(d.u8()?)?,
            checks: d.u32()?,
            next_check: d.opt_i64()?,
            resolved_at: d.opt_i64()?,
            unreachable_since: None,
            unreachable_attempts: 0,
            history: Vec::new(),
        };
        let n = d.u32()?;
        for _ in 0..n {
            t.history.push(decode_event(d)?);
        }
        if version >= 2 {
            t.unreachable_since = d.opt_i64()?;
            t.unreachable_attempts = d.u32()?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_roundtrip_with_every_event() {
        let mut t = Txn::new("id".into(), "t".into(), "m".into(), "p".into(), 5, 10);
        t.unreachable(8, 100, 1000);
        t.checked("p", 4, 10, 100);
        t.end(Resolution::Unknown, Actor::Check, None, 12).unwrap();
        t.end(Resolution::Unknown, Actor::Producer, None, 13).unwrap();
        t.unreachable(14, 100, 1000);
        assert_eq!(Txn::decode(&t.encode()).unwrap(), t);
        t.exhaust(true, "why".into(), 20);
        t.resume(Some("why".into()), 30).unwrap();
        t.end(Resolution::Commit, Actor::Operator, Some("ok".into()), 40).unwrap();
        assert_eq!(Txn::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn version_1_records_still_decode() {
        // A pending transaction with one unanswered check, as version 1 wrote it.
        let mut e = Encoder::new();
        e.u8(1).str("id").str("t").str("m").str("p").i64(5).u8(1).u32(1).opt_i64(Some(40)).opt_i64(None).u32(2);
        e.u8(1).i64(5).str("p");
        e.u8(2).i64(10).str("p").u8(0);
        let t = Txn::decode(&e.finish()).unwrap();
        assert_eq!((t.checks, t.next_check, t.unreachable_since), (1, Some(40), None));
        assert!(matches!(&t.history[1], Event::Checked { stream: 0, answer: None, .. }));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Txn::decode(&bytes);
        }
    }
}
