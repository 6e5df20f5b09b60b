//! Durable storage: a small key-value trait, its two implementations and the group-commit
//! writer that every write goes through.
//!
//! # Contract of [`Store`]
//! - [`Store::apply`] applies a [`Batch`] atomically: after a crash either all of it or none of
//!   it is visible. It is *not* durable yet.
//! - [`Store::flush`] makes everything applied before it durable (fsync, power-loss safe).
//! - Reads see every applied batch, flushed or not. Scans are bounded by a limit.
//! - Keys starting with `0xFF` are reserved for a store's own bookkeeping: a batch that writes
//!   one may be refused (the sled store does), and scans need not return them.
//!
//! Nobody calls `apply`/`flush` directly except the [`Committer`], which batches concurrent
//! writes into one apply and one flush (group commit) and poisons itself after a failed flush:
//! an OK answer from the broker therefore always means "fsynced".
//!
//! # Layout
//! - [`keys`]: the one `Key` enum that is the schema, with its order-preserving encoding.
//! - [`chunks`]: splits large records into small values (sled fsync limits, see docs/storage.md).
//! - [`sled_store`]: the sled implementation (the only module that names `sled`).
//! - [`value_log`]: the sled store's segment files for message chunks.
//! - [`journal`]: an append-only log of records in preallocated segments, with recovery.
//! - [`message_files`]: message chunks in the journal, found through the queue indexes, and
//!   the message-id index in sorted runs.
//! - [`queue_index`]: per-queue indexes of fixed-size entries into the journal.
//! - [`sorted_runs`]: an ordered map of small keys in sorted, immutable files (the message-id
//!   index of message files).
//! - [`segment_file`]: the preallocated files the value log and the journal are made of.
//! - [`memory`]: an in-memory implementation for tests.
//! - [`committer`]: the group-commit writer thread.
//! - [`faults`]: a store wrapper that fails on command, for fault-injection tests.

pub mod chunks;
pub mod committer;
pub mod faults;
pub mod journal;
pub mod keys;
pub mod memory;
pub mod message_files;
pub mod queue_index;
pub mod segment_file;
pub mod sled_store;
pub mod sorted_runs;
pub mod value_log;

#[cfg(test)]
mod conformance;

use std::ops::Bound;
use std::sync::Arc;
use thiserror::Error;

pub use committer::{AfterCommit, CommitStats, Committer, Replicator};
pub use keys::Key;
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// Why a store operation failed.
#[derive(Debug, Error, Clone)]
pub enum StoreError {
    /// The underlying engine or the file system failed.
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A stored value could not be decoded: the data is corrupt or from an unknown version.
    #[error("corrupt record under key {key:?}: {detail}")]
    Corrupt { key: Vec<u8>, detail: String },
    /// A flush failed earlier; the store accepts no more writes until the broker restarts.
    #[error("store is read-only after a failed flush: {0}")]
    Poisoned(String),
    /// The broker is shutting down and the writer no longer accepts work.
    #[error("store is shutting down")]
    Closed,
    /// Fewer in-sync replicas than `--min-insync-replicas` hold the shard: nothing was written
    /// (or, for a write caught while replicas were lost, it is not acknowledged yet).
    #[error("not enough in-sync replicas: {0}")]
    NotEnoughReplicas(String),
}

/// One write of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Writes applied together, atomically, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: &Key, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put(key.encode(), value));
        self
    }

    pub fn delete(&mut self, key: &Key) -> &mut Self {
        self.ops.push(Op::Delete(key.encode()));
        self
    }

    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put(key, value));
        self
    }

    pub fn delete_raw(&mut self, key: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Delete(key));
        self
    }

    /// Appends `other`'s writes after this batch's own.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The batch as bytes (replication ships batches between nodes).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = crate::codec::Encoder::new();
        e.u32(self.ops.len() as u32);
        for op in &self.ops {
            match op {
                Op::Put(k, v) => e.u8(1).bytes(k).bytes(v),
                Op::Delete(k) => e.u8(2).bytes(k),
            };
        }
        e.finish()
    }

    /// A batch [`Batch::encode`] made.
    pub fn decode(bytes: &[u8]) -> Result<Batch, crate::codec::CodecError> {
        let mut d = crate::codec::Decoder::new(bytes);
        let n = d.u32()?;
        let mut ops = Vec::with_capacity((n as usize).min(65_536));
        for _ in 0..n {
            ops.push(match d.u8()? {
                1 => Op::Put(d.bytes()?.to_vec(), d.bytes()?.to_vec()),
                2 => Op::Delete(d.bytes()?.to_vec()),
                v => return Err(crate::codec::invalid("batch op", v)),
            });
        }
        d.finish()?;
        Ok(Batch { ops })
    }
}

/// A key-value pair returned by a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An ordered, atomic-batch key-value store. See the module docs for the contract.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with keys in `(start, end)`, in key order (or reverse order).
    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Applies every write of `batch` atomically. Not durable until [`Store::flush`].
    fn apply(&self, batch: &Batch) -> Result<(), StoreError>;

    /// Makes every applied batch durable on disk (fsync).
    fn flush(&self) -> Result<(), StoreError>;

    /// Flushes, and leaves nothing for the next open to replay (a clean shutdown, as a
    /// database takes a shutdown checkpoint): for stores without a journal, a flush.
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.flush()
    }

    /// Bytes used on disk (0 for memory stores).
    fn size_on_disk(&self) -> u64;
}

/// The layout version of the store: the key schema and record encodings a broker writes.
/// Version 1: everything up to the open-transaction index and dead-letter resent marks; 2 adds
/// them (a version-1 store is upgraded in place at open); 3
/// adds users and version-2 message records (the body encoding), which a broker of schema 2
/// would misread, so it refuses the store; 4 adds lite topics (their keys and version-3
/// message records), which a broker of schema 3 cannot read; 5 adds the value log (in a store
/// created with `--value-log true`, message chunks in sled are pointers into `values/`), which
/// a broker of schema 4 would misread; 6 drops the transaction resolution index and keeps only
/// parked transactions in the open index (a store of 5 or less is converted in place at open,
/// see `txn::service::Open`), and a broker of schema 5 would never purge the transactions
/// resolved since, so it refuses the store; 7 keeps the message-id index of a store with
/// message files (the default layout of a new store since) in sorted runs, its changes in the
/// journal's records, which a broker of schema 6 would miss or fail to read, so it refuses
/// the store; 8 keeps every per-message record of such a new store there too (transaction
/// records, half messages, cursors, deliveries in flight, the message-key index), which a
/// broker of schema 7 would look for in sled, so it refuses the store; 9 adds version-4
/// (compact) message records, which a broker of schema 8 cannot read, so it refuses the store
/// — stamped only once this broker writes them (`--message-record-version`, 4 by default): a
/// broker writing version 3 stamps 8, so that the broker before it still opens the store.
pub const SCHEMA_VERSION: u32 = 9;

/// The schema a broker writing message records of `version` stamps: [`SCHEMA_VERSION`], or 8
/// while it writes the version brokers of schema 8 read.
pub fn schema_written(message_record_version: u8) -> u32 {
    if message_record_version < 4 {
        8
    } else {
        SCHEMA_VERSION
    }
}

/// Checks the store's schema version at open, writing `stamp` (at most [`SCHEMA_VERSION`],
/// see [`schema_written`]) into a new or older store; never lowers it. A store written by a
/// newer broker is refused: this one could misread it.
pub fn check_schema(store: &dyn Store, stamp: u32) -> Result<(), StoreError> {
    let key = Key::Meta("schema-version".into()).encode();
    let found = match store.get(&key)? {
        Some(v) => {
            let bytes: [u8; 4] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                key: key.clone(),
                detail: format!("schema version of {} bytes", v.len()),
            })?;
            u32::from_be_bytes(bytes)
        }
        None => 0,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::Io(format!(
            "the store was written by a newer txmq (schema version {found}; this broker reads up to {SCHEMA_VERSION}); \
             run that version, or a newer one"
        )));
    }
    let stamp = stamp.min(SCHEMA_VERSION);
    if found < stamp {
        let mut batch = Batch::new();
        batch.put_raw(key, stamp.to_be_bytes().to_vec());
        store.apply(&batch)?;
        store.flush()?;
    }
    Ok(())
}

/// A shared store is a store: lets wrappers such as `faults::FaultyStore` sit over one that
/// others hold too.
impl Store for Arc<dyn Store> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        (**self).scan(start, end, limit, reverse)
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }

    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        (**self).checkpoint()
    }

    fn size_on_disk(&self) -> u64 {
        (**self).size_on_disk()
    }
}

/// True for ranges that hold no key: inverted, or empty with an excluded bound. (Both
/// `BTreeMap::range` and sled panic on some of these, so stores check first.)
pub fn is_empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

/// Where `key` lies against a range: whether it is past its start, and whether it is before
/// its end (in the range when both).
pub fn sides(key: &[u8], start: Bound<&[u8]>, end: Bound<&[u8]>) -> (bool, bool) {
    let after_start = match start {
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
        Bound::Unbounded => true,
    };
    let before_end = match end {
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
        Bound::Unbounded => true,
    };
    (after_start, before_end)
}

/// Scan helper: up to `limit` entries whose keys start with `prefix`.
/// Visits the entries under `prefix` in key order, reading pages of 1,000 so that memory
/// stays bounded whatever their number; stops when `visit` returns false.
pub fn for_each_in_prefix<E: From<StoreError>>(
    store: &dyn Store,
    prefix: &[u8],
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<bool, E>,
) -> Result<(), E> {
    let end = keys::prefix_end(prefix);
    let mut from: Vec<u8> = prefix.to_vec();
    let mut inclusive = true;
    loop {
        let start = if inclusive { Bound::Included(from.as_slice()) } else { Bound::Excluded(from.as_slice()) };
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let page = store.scan(start, end, 1000, false)?;
        let Some(last) = page.last().map(|(k, _)| k.clone()) else { return Ok(()) };
        for (k, v) in page {
            if !visit(k, v)? {
                return Ok(());
            }
        }
        from = last;
        inclusive = false;
    }
}

pub fn scan_prefix(store: &dyn Store, prefix: &[u8], limit: usize, reverse: bool) -> Result<Vec<Entry>, StoreError> {
    let end = keys::prefix_end(prefix);
    let end_bound = match &end {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    store.scan(Bound::Included(prefix), end_bound, limit, reverse)
}
