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
//! - Every byte in sled is written to disk about four times (leaf rewrites). Message chunks
//!   (`Key::MessageChunk`) of a store created with `--value-log true` therefore live in the
//!   [`value_log`], and sled holds a 20-byte pointer to each. Other stores keep them in sled
//!   (a store is not converted).
//! - Keys starting with [`value_log::RESERVED`] are this module's own (the value log's live
//!   counts); scans never return them and batches may not write them.

use super::keys::is_message_chunk;
use super::message_files::{self, MessageFiles};
use super::value_log::{self, Pointer, ValueLog, RESERVED};
use super::{Batch, Entry, Op, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Where message chunks live, for a store created with a value log.
    values: Option<ValueLog>,
    /// Where message chunks live, for a store created with message files.
    messages: Option<MessageFiles>,
    /// Whether sled was written since its last flush. With message files, a batch that writes
    /// nothing to sled is durable once its journal record is synced, and a flush after only
    /// such batches leaves sled alone.
    sled_written: AtomicBool,
}

/// Where a store keeps its message chunks, chosen when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// In sled, as every other key.
    Sled,
    /// Their values in the value log, a pointer to each in sled (`--value-log`).
    ValueLog,
    /// Written once, in a journal, and found through per-queue indexes; none in sled
    /// (`--message-files`, `store::message_files`).
    MessageFiles,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A sled error: damaged data it found is [`StoreError::Corrupt`], anything else an I/O error.
fn db_error(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Corrupt { key: Vec::new(), detail: e.to_string() },
        e => io(e),
    }
}

impl SledStore {
    /// Opens (or creates, keeping records in sled) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Layout::Sled)
    }

    /// Opens the store in `dir`; if it is new, it keeps message chunks as `layout` says. (An
    /// existing store keeps the layout it was created with.)
    pub fn open_with(dir: &Path, layout: Layout) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let db = open_db(dir)?;
        let log_file = File::open(dir.join("db")).map_err(io)?;
        // sled writes its `conf` file (read at every open) without an fsync; the directory
        // entries of a freshly created log and conf must be durable too (the data directory is
        // synced below, once every part of the store has made its entries in it).
        File::open(dir.join("conf")).and_then(|f| f.sync_all()).map_err(io)?;
        let layout = if db.was_recovered() {
            if db.contains_key(value_log::enabled_key()).map_err(db_error)? {
                Layout::ValueLog
            } else if db.contains_key(message_files::enabled_key()).map_err(db_error)? {
                Layout::MessageFiles
            } else {
                Layout::Sled
            }
        } else {
            // A new store keeps its layout for good.
            let mark = match layout {
                Layout::Sled => None,
                Layout::ValueLog => Some(value_log::enabled_key()),
                Layout::MessageFiles => Some(message_files::enabled_key()),
            };
            if let Some(key) = mark {
                db.insert(key, vec![1]).map_err(db_error)?;
                if layout == Layout::MessageFiles {
                    db.insert(message_files::keyed_key(), vec![message_files::KEYED_LATEST]).map_err(db_error)?;
                }
                db.flush().map_err(db_error)?;
                log_file.sync_data().map_err(io)?;
            }
            layout
        };
        let with_values = layout == Layout::ValueLog;
        let messages = if layout == Layout::MessageFiles {
            let mut stored = Vec::new();
            for item in db.scan_prefix(message_files::prefix()) {
                let (k, v) = item.map_err(db_error)?;
                stored.push((k.to_vec(), v.to_vec()));
            }
            Some(MessageFiles::open(&dir.join("messages"), stored)?)
        } else {
            None
        };
        let values = if with_values {
            let mut live = BTreeMap::new();
            for item in db.scan_prefix(value_log::count_prefix()) {
                let (k, v) = item.map_err(db_error)?;
                let (segment, count) = value_log::parse_count(&k, &v)
                    .ok_or_else(|| StoreError::Corrupt { key: k.to_vec(), detail: "value-log count".into() })?;
                live.insert(segment, count);
            }
            Some(ValueLog::open(&dir.join("values"), live)?)
        } else {
            None
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(Self { db, log_file, dir: dir.to_path_buf(), values, messages, sled_written: AtomicBool::new(true) })
    }

    /// Whether message chunks of this store live in its value log.
    pub fn has_value_log(&self) -> bool {
        self.values.is_some()
    }

    /// Where this store keeps its message chunks.
    pub fn layout(&self) -> Layout {
        match (&self.values, &self.messages) {
            (Some(_), _) => Layout::ValueLog,
            (None, Some(_)) => Layout::MessageFiles,
            (None, None) => Layout::Sled,
        }
    }

    fn apply_with_messages(&self, messages: &MessageFiles, batch: &Batch) -> Result<(), StoreError> {
        let (chunks, rest): (Vec<&Op>, Vec<&Op>) = batch.ops().iter().partition(|op| messages.owns(op_key(op)));
        if rest.is_empty() {
            let (prepared, _) = messages.prepare(&chunks, true)?;
            return prepared.applied();
        }
        let (prepared, writes) = messages.prepare(&chunks, false)?;
        let mut b = sled::Batch::default();
        for op in rest {
            match op {
                Op::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
                Op::Delete(k) => b.remove(k.as_slice()),
            }
        }
        for (k, v) in writes {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.sled_written.store(true, Ordering::SeqCst);
        self.db.apply_batch(b).map_err(db_error)?;
        prepared.applied()
    }

    /// The value stored under `key` as the broker sees it: a message chunk's pointer is
    /// followed into the value log. `None` when the pointer's segment was recycled because the
    /// key was deleted meanwhile (a scan racing a deletion).
    fn resolve(&self, key: &[u8], stored: sled::IVec) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(values) = self.values.as_ref().filter(|_| is_message_chunk(key)) else {
            return Ok(Some(stored.to_vec()));
        };
        let first = values.read(key, &Pointer::decode(key, &stored)?);
        if let Ok(Some(v)) = first {
            return Ok(Some(v));
        }
        // Gone or overwritten: fine if the key no longer holds that pointer.
        match self.db.get(key).map_err(db_error)? {
            Some(now) if now == stored => first,
            Some(now) => values.read(key, &Pointer::decode(key, &now)?),
            None => Ok(None),
        }
    }

    fn apply_with_values(&self, values: &ValueLog, batch: &Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let mut log = values.begin();
        // The pointer each chunk key holds as this batch proceeds (later writes win).
        let mut current: HashMap<&[u8], Option<Pointer>> = HashMap::new();
        for op in batch.ops() {
            let key = op_key(op);
            if !is_message_chunk(key) {
                match op {
                    Op::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
                    Op::Delete(k) => b.remove(k.as_slice()),
                }
                continue;
            }
            let old = match current.get(key) {
                Some(p) => *p,
                None => self.db.get(key).map_err(db_error)?.map(|v| Pointer::decode(key, &v)).transpose()?,
            };
            if let Some(old) = old {
                log.release(&old);
            }
            match op {
                Op::Put(k, v) => {
                    let p = log.append(v)?;
                    b.insert(k.as_slice(), p.encode());
                    current.insert(key, Some(p));
                }
                Op::Delete(k) => {
                    b.remove(k.as_slice());
                    current.insert(key, None);
                }
            }
        }
        for (k, count) in log.sync()? {
            match count {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(db_error)?;
        log.applied();
        Ok(())
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
            Err(e) => return Err(db_error(e)),
        }
    }
}

fn op_key(op: &Op) -> &[u8] {
    match op {
        Op::Put(k, _) | Op::Delete(k) => k,
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
        if value_log::is_reserved(key) {
            return Ok(None);
        }
        if let Some(messages) = self.messages.as_ref().filter(|m| m.owns(key)) {
            return messages.get(key);
        }
        match self.db.get(key).map_err(db_error)? {
            Some(v) => self.resolve(key, v),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        // The store's own keys sort last; no scan reaches them.
        let reserved = [RESERVED];
        let end = match end {
            Bound::Included(e) | Bound::Excluded(e) if e < reserved.as_slice() => end,
            _ => Bound::Excluded(reserved.as_slice()),
        };
        if super::is_empty_range(start, end) {
            return Ok(Vec::new());
        }
        let iter = self.db.range::<Vec<u8>, _>((to_bound(start), to_bound(end)));
        let mut out = Vec::new();
        let mut push = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<(), StoreError> {
            let (k, v) = item.map_err(db_error)?;
            if let Some(v) = self.resolve(&k, v)? {
                out.push((k.to_vec(), v));
            }
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
        // The keys message files keep (message chunks, and the message-id index of stores
        // created with it) are not in sled: merged in.
        if let Some(messages) = &self.messages {
            let mut chunks = messages.scan(start, end, limit, reverse)?;
            if !chunks.is_empty() {
                out.append(&mut chunks);
                out.sort_by(|a, b| if reverse { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) });
                out.truncate(limit);
            }
        }
        Ok(out)
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        if let Some(key) = batch.ops().iter().map(op_key).find(|k| value_log::is_reserved(k)) {
            return Err(StoreError::Io(format!("key {key:?} is reserved by the store")));
        }
        if let Some(values) = &self.values {
            return self.apply_with_values(values, batch);
        }
        if let Some(messages) = &self.messages {
            return self.apply_with_messages(messages, batch);
        }
        let mut b = sled::Batch::default();
        for op in batch.ops() {
            match op {
                Op::Put(k, v) => b.insert(k.as_slice(), v.as_slice()),
                Op::Delete(k) => b.remove(k.as_slice()),
            }
        }
        self.db.apply_batch(b).map_err(db_error)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let freed = self.values.as_ref().map(ValueLog::take_freed).unwrap_or_default();
        // The journal records sled holds now; durable once the flush below is done.
        let messages = self.messages.as_ref().map(|m| (m, m.applied()));
        // Only batches whose journal records are synced and whole since the last flush: sled
        // has nothing to make durable.
        if self.messages.is_none() || self.sled_written.swap(false, Ordering::SeqCst) {
            self.db.flush().map_err(db_error)?;
            self.log_file.sync_data().map_err(io)?;
        }
        if let Some((messages, applied)) = messages {
            // Their index entries go to the files; a checkpoint's sled part, durable at the
            // next flush.
            let writes = messages.flushed(applied)?;
            if !writes.is_empty() {
                let mut b = sled::Batch::default();
                for (k, v) in writes {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                self.sled_written.store(true, Ordering::SeqCst);
                self.db.apply_batch(b).map_err(db_error)?;
            }
        }
        // Segments emptied by what is now durable can go.
        match &self.values {
            Some(values) if !freed.is_empty() => values.recycle(freed),
            _ => Ok(()),
        }
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        let Some(messages) = &self.messages else { return self.flush() };
        messages.checkpoint_at_every_flush();
        // A flush writes the index files and takes the checkpoint (its files made durable
        // first); the next makes its sled part durable. One in the background when this
        // started is finished first; its files may wait for a merge of runs.
        let started = std::time::Instant::now();
        while !messages.nothing_to_replay() {
            self.flush()?;
            if started.elapsed() > std::time::Duration::from_secs(120) {
                return Err(StoreError::Io("the shutdown checkpoint did not finish within 120 s".into()));
            }
        }
        self.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
            + self.values.as_ref().map_or(0, ValueLog::size_on_disk)
            + self.messages.as_ref().map_or(0, MessageFiles::size_on_disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{chunks, Key};
    use std::time::Duration;

    fn chunk_key(offset: u64) -> Key {
        Key::MessageChunk { topic: "t".into(), queue: 0, offset, chunk: 0 }
    }

    fn put_messages(store: &SledStore, offsets: std::ops::Range<u64>, size: usize) {
        let mut b = Batch::new();
        for offset in offsets {
            b.put(&chunk_key(offset), vec![(offset % 251) as u8; size]);
        }
        store.apply(&b).unwrap();
        store.flush().unwrap();
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("values"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn message_chunks_go_to_the_value_log_and_sled_keeps_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        assert!(store.has_value_log());
        put_messages(&store, 0..10, 256);
        let raw = store.db.get(chunk_key(3).encode()).unwrap().unwrap();
        assert_eq!(raw.len(), Pointer::LEN, "sled holds a pointer, not the value");
        assert_eq!(store.get(&chunk_key(3).encode()).unwrap(), Some(vec![3; 256]));
        // Other keys stay in sled as they are.
        let mut b = Batch::new();
        b.put(&Key::Topic("t".into()), vec![7; 300]);
        store.apply(&b).unwrap();
        assert_eq!(store.db.get(Key::Topic("t".into()).encode()).unwrap().unwrap().len(), 300);
        // Scans resolve pointers and never show the store's own keys.
        let all = store.scan(Bound::Unbounded, Bound::Unbounded, 100, false).unwrap();
        assert!(all.iter().all(|(k, _)| !value_log::is_reserved(k)), "{all:?}");
        let chunks = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 100, true).unwrap();
        assert_eq!(chunks.len(), 10);
        assert_eq!(chunks[0].1, vec![9; 256]);
        // A batch may not write them either.
        let mut b = Batch::new();
        b.put_raw(value_log::count_key(1), vec![0; 8]);
        assert!(store.apply(&b).is_err());
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        assert_eq!(store.get(&chunk_key(9).encode()).unwrap(), Some(vec![9; 256]));
    }

    #[test]
    fn segments_whose_values_are_all_deleted_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        // 4 KiB values: 1,000 of them fill the first segments (1, 2 MiB) and part of a third.
        for start in (0..1000).step_by(100) {
            put_messages(&store, start..start + 100, 4096);
        }
        assert!(segments(dir.path()).len() >= 3, "{:?}", segments(dir.path()));
        // The value log's segment bytes (sled's file may grow meanwhile, by its own rules, and
        // the spare segment is being zeroed by a background thread at its own pace: counted, it
        // made this test fail now and then on a busy machine).
        let value_log_bytes = || -> u64 {
            segments(dir.path())
                .iter()
                .map(|n| std::fs::metadata(dir.path().join("values").join(n)).unwrap().len())
                .sum()
        };
        let before = value_log_bytes();
        // Overwrite half and delete the other half: the first segments hold nothing live.
        let mut b = Batch::new();
        for offset in 0..1000 {
            if offset % 2 == 0 {
                b.delete(&chunk_key(offset));
            } else {
                b.put(&chunk_key(offset), vec![1; 16]);
            }
        }
        store.apply(&b).unwrap();
        store.flush().unwrap();
        let left = segments(dir.path());
        assert_eq!(left.len(), 1, "only the active segment is left: {left:?}");
        assert!(value_log_bytes() < before);
        assert_eq!(store.get(&chunk_key(1).encode()).unwrap(), Some(vec![1; 16]));
        assert_eq!(store.get(&chunk_key(2).encode()).unwrap(), None);
        // Reopening starts a new segment and keeps the one with live values.
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        assert_eq!(segments(dir.path()).len(), 2);
        assert_eq!(store.get(&chunk_key(999).encode()).unwrap(), Some(vec![1; 16]));
        // Deleting the rest empties that one too; reopening then removes it.
        let mut b = Batch::new();
        for offset in (1..1000).step_by(2) {
            b.delete(&chunk_key(offset));
        }
        store.apply(&b).unwrap();
        store.flush().unwrap();
        drop(store);
        let _store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        assert_eq!(segments(dir.path()).len(), 1, "only the new active segment");
    }

    #[test]
    fn a_damaged_value_is_reported_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        put_messages(&store, 0..1, 256);
        let seg = dir.path().join("values").join(&segments(dir.path())[0]);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[10] ^= 0xFF;
        std::fs::write(&seg, bytes).unwrap();
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        let err = store.get(&chunk_key(0).encode()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn values_written_by_a_batch_sled_never_got_are_not_seen() {
        // A crash between the value-log write and sled's apply leaves unreferenced bytes.
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        put_messages(&store, 0..1, 256);
        {
            let values = store.values.as_ref().unwrap();
            let mut log = values.begin();
            log.append(&[9; 256]).unwrap();
            log.sync().unwrap();
            // Dropped without `applied`: as if sled's apply never happened.
        }
        put_messages(&store, 1..2, 256);
        assert_eq!(store.get(&chunk_key(1).encode()).unwrap(), Some(vec![1; 256]));
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        let all = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 10, false).unwrap();
        assert_eq!(all.len(), 2);
    }

    fn messages(store: &SledStore) -> &MessageFiles {
        store.messages.as_ref().unwrap()
    }

    fn chunk_keys_in_sled(store: &SledStore) -> usize {
        store.db.scan_prefix([Key::queue_prefix("t", 0)[0]]).count()
    }

    #[test]
    fn with_message_files_chunks_are_in_the_journal_and_none_in_sled() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        assert_eq!(store.layout(), Layout::MessageFiles);
        put_messages(&store, 0..10, 256);
        let mut b = Batch::new();
        b.put(&Key::Topic("t".into()), vec![7; 300]);
        store.apply(&b).unwrap();
        assert_eq!(chunk_keys_in_sled(&store), 0);
        assert_eq!(store.db.get(Key::Topic("t".into()).encode()).unwrap().unwrap().len(), 300);
        assert_eq!(store.get(&chunk_key(3).encode()).unwrap(), Some(vec![3; 256]));
        let all = store.scan(Bound::Unbounded, Bound::Unbounded, 100, false).unwrap();
        assert_eq!(all.len(), 11, "ten chunks and the topic, in key order");
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        let newest = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 3, true).unwrap();
        assert_eq!(newest.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [9, 8, 7]);
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::Sled).unwrap();
        assert_eq!(store.layout(), Layout::MessageFiles, "the layout is the store's, not the flag's");
        assert_eq!(store.get(&chunk_key(9).encode()).unwrap(), Some(vec![9; 256]));
        put_messages(&store, 10..12, 256);
        let first = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 1, false).unwrap();
        assert_eq!(first[0].0, chunk_key(0).encode());
    }

    #[test]
    fn with_message_files_a_batch_sled_never_took_is_never_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        put_messages(&store, 0..1, 256);
        {
            // Written and synced to the journal; sled's apply never happens.
            let op = Op::Put(chunk_key(5).encode(), vec![5; 256]);
            let (prepared, _writes) = messages(&store).prepare(&[&op], false).unwrap();
            drop(prepared);
        }
        put_messages(&store, 1..2, 256);
        assert_eq!(store.get(&chunk_key(5).encode()).unwrap(), None);
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        let all = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 10, false).unwrap();
        assert_eq!(all.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [0, 1]);
        // And a crash right after the journal's sync: the record is cut off at open.
        let op = Op::Put(chunk_key(7).encode(), vec![7; 256]);
        let (prepared, _writes) = messages(&store).prepare(&[&op], false).unwrap();
        std::mem::forget(prepared);
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        assert_eq!(store.get(&chunk_key(7).encode()).unwrap(), None);
        put_messages(&store, 2..3, 256);
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        let all = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 10, false).unwrap();
        assert_eq!(all.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn with_message_files_index_entries_lost_after_a_checkpoint_come_back_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        messages(&store).set_checkpoint_every(Duration::ZERO);
        put_messages(&store, 0..50, 256);
        store.flush().unwrap(); // the checkpoint of 0..50 is durable
        messages(&store).set_checkpoint_every(Duration::from_secs(3600));
        put_messages(&store, 50..100, 256);
        drop(store);
        // The index entries written since (never synced) lost, as a power loss may.
        let index = dir.path().join("messages").join("queues").join(crate::codec::hex(b"t", false)).join("0");
        let file = index.join(format!("{:016x}.qix", 0));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[50 * 32..100 * 32].fill(0);
        std::fs::write(&file, bytes).unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        for offset in 0..100 {
            assert_eq!(store.get(&chunk_key(offset).encode()).unwrap(), Some(vec![(offset % 251) as u8; 256]));
        }
    }

    #[test]
    fn with_message_files_a_checkpoint_leaves_the_next_open_nothing_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        // Checkpoints as after a busy minute: none since these writes.
        messages(&store).set_checkpoint_every(Duration::from_secs(3600));
        for start in (0..1000).step_by(100) {
            put_messages(&store, start..start + 100, 64);
        }
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        assert!(messages(&store).replayed_at_open() >= 10, "written after the checkpoint, replayed");
        messages(&store).set_checkpoint_every(Duration::from_secs(3600));
        put_messages(&store, 1000..1100, 64);
        store.checkpoint().unwrap();
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        assert_eq!(messages(&store).replayed_at_open(), 0);
        let all = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 2000, false).unwrap();
        assert_eq!(all.len(), 1100);
        assert_eq!(all[1099].1, vec![(1099 % 251) as u8; 64]);
    }

    #[test]
    fn with_message_files_retention_deletes_journal_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        messages(&store).set_checkpoint_every(Duration::ZERO);
        // 4 KiB messages: 3,000 fill journal segments of 1, 2, 4 and 8 MiB.
        for start in (0..3000).step_by(100) {
            put_messages(&store, start..start + 100, 4096);
        }
        let before = messages(&store).journal_segments();
        assert!(before.len() >= 4, "{before:?}");
        let mut b = Batch::new();
        for offset in 0..2900 {
            b.delete(&chunk_key(offset));
        }
        store.apply(&b).unwrap();
        store.flush().unwrap();
        store.flush().unwrap();
        // Deleted by the background thread, soon after.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut after = messages(&store).journal_segments();
        while after.len() >= before.len() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            after = messages(&store).journal_segments();
        }
        assert!(after.len() < before.len(), "{before:?} -> {after:?}");
        let first = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 1, false).unwrap();
        assert_eq!(first[0].0, chunk_key(2900).encode());
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        assert_eq!(store.get(&chunk_key(2899).encode()).unwrap(), None);
        assert_eq!(store.get(&chunk_key(2999).encode()).unwrap(), Some(vec![(2999 % 251) as u8; 4096]));
        let all = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 1000, false).unwrap();
        assert_eq!(all.len(), 100);
    }

    #[test]
    fn with_message_files_retention_deletes_index_files_below_a_queues_first_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        messages(&store).set_checkpoint_every(Duration::ZERO);
        // An index file holds 65,536 offsets.
        for start in (0..70_000).step_by(10_000) {
            put_messages(&store, start..start + 10_000, 8);
        }
        let index = dir.path().join("messages").join("queues").join(crate::codec::hex(b"t", false)).join("0");
        let files = || std::fs::read_dir(&index).unwrap().count();
        assert_eq!(files(), 2);
        let mut b = Batch::new();
        for offset in 0..65_537 {
            b.delete(&chunk_key(offset));
        }
        store.apply(&b).unwrap();
        store.flush().unwrap();
        store.flush().unwrap();
        assert_eq!(files(), 1, "the file of offsets below 65,536 is gone");
        drop(store);
        let store = SledStore::open_with(dir.path(), Layout::MessageFiles).unwrap();
        let first = crate::store::scan_prefix(&store, &Key::queue_prefix("t", 0), 1, false).unwrap();
        assert_eq!(first[0].0, chunk_key(65_537).encode());
    }

    #[test]
    fn a_store_made_without_the_value_log_keeps_its_records_in_sled() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        // Asking for the value log later does not convert it.
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        assert!(!store.has_value_log());
        put_messages(&store, 0..1, 256);
        assert_eq!(store.db.get(chunk_key(0).encode()).unwrap().unwrap().len(), 256);
        assert!(!dir.path().join("values").exists());
        // Its reserved keys are refused all the same.
        let mut b = Batch::new();
        b.put_raw(value_log::enabled_key(), vec![1]);
        assert!(store.apply(&b).is_err());
        assert!(!store.has_value_log());
    }

    #[test]
    fn a_store_made_before_the_value_log_keeps_its_records_in_sled() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![5u8; 300];
        {
            // What an earlier broker left: a record stored in sled itself.
            let db = sled::open(dir.path()).unwrap();
            db.insert(chunk_key(0).encode(), body.clone()).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open_with(dir.path(), Layout::ValueLog).unwrap();
        assert!(!store.has_value_log());
        assert_eq!(chunks::get(&store, &Key::message_prefix("t", 0, 0)).unwrap(), Some(body.clone()));
        put_messages(&store, 1..2, 256);
        assert_eq!(store.db.get(chunk_key(1).encode()).unwrap().unwrap().len(), 256);
        assert!(!dir.path().join("values").exists());
    }
}
