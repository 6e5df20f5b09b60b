//! The sled 0.34 implementation of [`Store`]: the only module that names `sled`.
//!
//! Facts this module is built around (measured, see docs/storage.md):
//! - `sled::Db::flush` ends in `sync_file_range`, which survives a process crash but not a power
//!   loss. [`SledStore::flush`] therefore also calls `fdatasync` on sled's log file (`<dir>/db`).
//! - sled writes log items larger than about 128 KiB to separate blob files that it never
//!   fsyncs. Callers keep every value small (records are chunked by `store::chunks`), and
//!   [`SledStore::blob_file_count`] lets tests check that no blob file ever appears.
//! - One `apply_batch` on one tree is atomic across a crash, so the whole schema lives in the
//!   default tree and every broker write is one batch.

use super::{Batch, Entry, Op, Store, StoreError};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// sled's cache; RSS grows to a few times this (sled issue #1309). 32 MiB keeps the broker under
/// 160 MiB with a million stored messages (64 MiB reached 202 MiB) at the same send rate.
const CACHE_CAPACITY_BYTES: u64 = 32 * 1024 * 1024;

/// A sled database in a directory, made power-loss durable by an explicit `fdatasync`.
pub struct SledStore {
    db: sled::Db,
    /// A second handle on sled's log file: fsync acts on the inode, so syncing it makes the
    /// bytes sled wrote durable.
    log_file: File,
    dir: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let db = open_db(dir)?;
        let log_file = File::open(dir.join("db")).map_err(io)?;
        // sled writes its `conf` file (read at every open) without an fsync; the directory
        // entries of a freshly created log and conf must be durable too.
        File::open(dir.join("conf")).and_then(|f| f.sync_all()).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(Self { db, log_file, dir: dir.to_path_buf() })
    }

    /// Files in sled's `blobs/` directory: values that escaped the fsynced log. Always 0 when
    /// callers respect the chunking rule.
    pub fn blob_file_count(&self) -> usize {
        std::fs::read_dir(self.dir.join("blobs")).map(|d| d.count()).unwrap_or(0)
    }
}

/// Opens sled, waiting up to 5 s for its file lock: after a `SledStore` is dropped, sled's
/// background flusher may hold the database for up to one flush period (500 ms), so an
/// immediate reopen in the same process (a restart) would otherwise fail.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(dir).cache_capacity(CACHE_CAPACITY_BYTES).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(io(e)),
        }
    }
}

fn to_bound(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        if super::is_empty_range(start, end) {
            return Ok(Vec::new());
        }
        let iter = self.db.range::<Vec<u8>, _>((to_bound(start), to_bound(end)));
        let mut out = Vec::new();
        let mut push = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<(), StoreError> {
            let (k, v) = item.map_err(io)?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        };
        if reverse {
            for item in iter.rev().take(limit) {
                push(item)?;
            }
        } else {
            for item in iter.take(limit) {
                push(item)?;
            }
        }
        Ok(out)
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for op in batch.ops() {
            match op {
                Op::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
                Op::Delete(k) => b.remove(k.as_slice()),
            }
        }
        self.db.apply_batch(b).map_err(io)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        self.log_file.sync_data().map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
