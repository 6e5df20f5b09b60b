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
pub mod rejoin;

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
    /// How long a follower may be gone before the leader copies the shard to another node
    /// instead (zero: never; a drained follower is replaced at once).
    pub replace_after: Duration,
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

fn history_key() -> Vec<u8> {
    Key::Meta("repl-epochs".into()).encode()
}

/// Set while a snapshot is being loaded into a store: from before its first page clears the
/// store until its last page is flushed. A store with it holds part of a copy, whatever
/// position keys its pages brought ([`Position::read`] answers zero for it).
fn loading_key() -> Vec<u8> {
    Key::Meta("repl-loading".into()).encode()
}

/// Loads one page of a snapshot into `store`. The first marks the store as loading, durably,
/// before it clears it; the last writes `done` (when given), removes the mark, and flushes, so
/// that a load cut short (a broken stream, a full disk, a crash) leaves a store that says it
/// holds nothing, and is sent a whole snapshot again.
pub(crate) fn load_snapshot_page(
    store: &dyn Store,
    first: bool,
    last: bool,
    entries: Batch,
    done: Option<Position>,
) -> Result<(), StoreError> {
    if first {
        let mut mark = Batch::new();
        mark.put_raw(loading_key(), vec![1]);
        store.apply(&mark)?;
        store.flush()?;
        clear(store)?;
    }
    let mut batch = entries;
    if last {
        if let Some(done) = done {
            done.write(&mut batch);
        }
        batch.delete_raw(loading_key());
    }
    store.apply(&batch)?;
    if last {
        store.flush()?;
    }
    Ok(())
}

/// Each epoch of a shard and the first sequence its leader wrote, oldest first: where a
/// returning leader's history parts from its successor's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History(pub Vec<(i64, u64)>);

impl History {
    pub fn read(store: &dyn Store) -> Result<History, StoreError> {
        let key = history_key();
        let Some(v) = store.get(&key)? else { return Ok(History::default()) };
        if v.len() % 16 != 0 {
            return Err(StoreError::Corrupt { key, detail: format!("epoch history of {} bytes", v.len()) });
        }
        let mut out = Vec::new();
        for c in v.chunks(16) {
            let (e, s) = c.split_at(8);
            let e: [u8; 8] = e.try_into().map_err(|_| StoreError::Io("epoch".into()))?;
            let s: [u8; 8] = s.try_into().map_err(|_| StoreError::Io("seq".into()))?;
            out.push((i64::from_be_bytes(e), u64::from_be_bytes(s)));
        }
        Ok(History(out))
    }

    pub fn write(&self, batch: &mut Batch) {
        let mut v = Vec::with_capacity(self.0.len() * 16);
        for (e, s) in &self.0 {
            v.extend_from_slice(&e.to_be_bytes());
            v.extend_from_slice(&s.to_be_bytes());
        }
        batch.put_raw(history_key(), v);
    }

    /// The first sequence written in an epoch after `epoch`, if any: a store at `epoch` holds
    /// nothing of its successors' history from there on.
    pub fn successor_start(&self, epoch: i64) -> Option<u64> {
        self.0.iter().find(|(e, _)| *e > epoch).map(|(_, s)| *s)
    }
}

impl Position {
    /// The position recorded in `store` (zero for a store never replicated, or one whose
    /// snapshot load did not finish).
    pub fn read(store: &dyn Store) -> Result<Position, StoreError> {
        if store.get(&loading_key())?.is_some() {
            return Ok(Position::default());
        }
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

/// Deletes every key of `store` but the loading mark (before a snapshot is loaded into it).
fn clear(store: &dyn Store) -> Result<(), StoreError> {
    let mark = loading_key();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let page = store.scan(start, std::ops::Bound::Unbounded, 1000, false)?;
        let Some((last, _)) = page.last() else { return Ok(()) };
        after = Some(last.clone());
        let mut batch = Batch::new();
        for (k, _) in page.into_iter().filter(|(k, _)| *k != mark) {
            batch.delete_raw(k);
        }
        store.apply(&batch)?;
    }
}

/// Entries of a snapshot page.
const SNAPSHOT_PAGE: usize = 512;

/// The next page of a snapshot of `store` after key `after` (from the start when `None`), as
/// a batch of puts; with the last key read (for the next page) and whether it was the last.
async fn snapshot_page(
    store: std::sync::Arc<dyn Store>,
    after: Option<Vec<u8>>,
) -> Result<(Batch, Option<Vec<u8>>, bool), StoreError> {
    tokio::task::spawn_blocking(move || {
        let start = after.as_deref().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let page = store.scan(start, std::ops::Bound::Unbounded, SNAPSHOT_PAGE, false)?;
        let last = page.len() < SNAPSHOT_PAGE;
        let next = page.last().map(|(k, _)| k.clone()).or(after);
        let mut batch = Batch::new();
        for (k, v) in page {
            batch.put_raw(k, v);
        }
        Ok((batch, next, last))
    })
    .await
    .map_err(|e| StoreError::Io(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_snapshot_load_cut_short_leaves_a_store_at_position_zero() {
        let store = MemoryStore::default();
        let mut old = Batch::new();
        old.put_raw(b"stale".to_vec(), b"x".to_vec());
        Position { epoch: 3, seq: 40 }.write(&mut old);
        store.apply(&old).unwrap();
        // The first page carries the leader's own position key (its keys sort first).
        let mut page = Batch::new();
        Position { epoch: 5, seq: 90 }.write(&mut page);
        page.put_raw(b"a".to_vec(), b"1".to_vec());
        load_snapshot_page(&store, true, false, page, None).unwrap();
        assert_eq!(store.get(b"stale").unwrap(), None, "cleared");
        assert_eq!(Position::read(&store).unwrap(), Position::default(), "part of a copy holds nothing");
        let mut page = Batch::new();
        page.put_raw(b"b".to_vec(), b"2".to_vec());
        load_snapshot_page(&store, false, true, page, Some(Position { epoch: 5, seq: 88 })).unwrap();
        assert_eq!(Position::read(&store).unwrap(), Position { epoch: 5, seq: 88 });
        assert_eq!(store.get(&loading_key()).unwrap(), None);
        assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

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
