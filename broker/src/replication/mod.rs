//! Replication of a node's store to followers on other nodes (docs/replication.md).
//!
//! A shard is one node's store. Its leader (the node) numbers every group commit with a
//! sequence, applies and fsyncs it, streams it to each follower, and answers the group's
//! writers only once every in-sync follower has it durably too (and at least
//! `--min-insync-replicas` copies exist); a follower that does not acknowledge in time leaves
//! the in-sync set, written to etcd before the write is acknowledged without it, and rejoins
//! once caught up. A follower behind the leader's retained log is first sent a snapshot.
//!
//! Owns: the leader's sequence, retained log and follower positions ([`leader`]); the
//! follower copies under `<data dir>/replicas/<shard>` ([`follower`]). Never touches topics,
//! messages or transactions: what it copies are the store's write batches, whatever they hold.

pub mod follower;
pub mod leader;

use crate::store::{Batch, Key, Store, StoreError};
use std::time::Duration;

/// How a shard is replicated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Copies of the shard, the leader's included.
    pub replicas: usize,
    /// Copies a write must be on before it is acknowledged; writes are refused with fewer in sync.
    pub min_insync: usize,
    /// How long the leader waits for an in-sync follower before dropping it from the set.
    pub ack_timeout: Duration,
    /// Bytes of recent batches the leader keeps for followers catching up.
    pub log_bytes: usize,
}

/// Where a store stands in its shard's history: the epoch of the leader that wrote its latest
/// batch and that batch's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: i64,
    pub seq: u64,
}

fn position_key() -> Vec<u8> {
    Key::Meta("repl-pos".into()).encode()
}

impl Position {
    /// The position recorded in `store` (zero for a store never replicated).
    pub fn read(store: &dyn Store) -> Result<Position, StoreError> {
        let key = position_key();
        let Some(v) = store.get(&key)? else { return Ok(Position::default()) };
        let bad =
            || StoreError::Corrupt { key: key.clone(), detail: format!("replication position of {} bytes", v.len()) };
        let epoch: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        let seq: [u8; 8] = v.get(8..16).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        Ok(Position { epoch: i64::from_be_bytes(epoch), seq: u64::from_be_bytes(seq) })
    }

    /// Adds the write of this position to `batch`.
    pub fn write(self, batch: &mut Batch) {
        let mut v = self.epoch.to_be_bytes().to_vec();
        v.extend_from_slice(&self.seq.to_be_bytes());
        batch.put_raw(position_key(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn positions_and_batches_round_trip() {
        let store = MemoryStore::default();
        assert_eq!(Position::read(&store).unwrap(), Position::default());
        let mut batch = Batch::new();
        batch.put_raw(b"k1".to_vec(), b"v1".to_vec()).delete_raw(b"k0".to_vec());
        Position { epoch: 7, seq: 42 }.write(&mut batch);
        let decoded = Batch::decode(&batch.encode()).unwrap();
        assert_eq!(decoded, batch);
        store.apply(&decoded).unwrap();
        assert_eq!(Position::read(&store).unwrap(), Position { epoch: 7, seq: 42 });
        assert!(Batch::decode(&[0, 0, 0, 1, 9]).is_err(), "an unknown op is refused");
        assert!(Batch::decode(&batch.encode()[..5]).is_err(), "a cut batch is refused");
    }
}
