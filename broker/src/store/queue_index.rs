//! Per-queue indexes into the journal: where each message of a queue lies, by offset.
//!
//! The second part of the broker's own store (docs/storage.md, "Building the store"): a
//! message's chunks are written once, in the [`super::journal`] record of its group commit, and
//! a queue's index maps each of its offsets to that place in fixed-size entries, so that a read
//! by offset costs one small `pread` and needs no memory per message.
//!
//! # Layout
//! `<dir>/<topic as hex>/<queue>/<n as 16 hex digits>.qix`: file `n` holds the entries of
//! offsets `n * per_file .. (n + 1) * per_file`, 32 bytes each, at `(offset % per_file) * 32`
//! (a page holds 128 whole entries, so no entry straddles two pages). Files are sparse: an
//! entry never written reads as zeros, which is "no entry". Retention deletes whole files.
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | journal segment (never 0) |
//! | 8..16 | position of the message's bytes in that segment |
//! | 16..20 | their length |
//! | 20..24 | their CRC-32 |
//! | 24..28 | CRC-32 of bytes 0..24 and the queue offset: an entry torn, or read at the wrong place, fails it |
//! | 28..32 | zero |
//!
//! # Durability
//! Entries are written to the page cache only; [`QueueIndex::sync`] makes every entry written
//! before it durable. The store writes the journal record first and syncs the indexes at its
//! checkpoints, so after a crash it writes again the entries of the journal records past the
//! last checkpoint; an entry lost or torn in between reads as absent or fails its checksum
//! until then.

use super::StoreError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of one entry.
pub const ENTRY: u64 = 32;

/// Files kept open at once; beyond it, clean files are closed (and opened again when read).
const MAX_OPEN: usize = 512;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Where one message's bytes are in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub segment: u64,
    pub position: u64,
    pub len: u32,
    pub crc: u32,
}

impl Entry {
    fn encode(&self, offset: u64) -> [u8; ENTRY as usize] {
        let mut e = [0u8; ENTRY as usize];
        e[0..8].copy_from_slice(&self.segment.to_le_bytes());
        e[8..16].copy_from_slice(&self.position.to_le_bytes());
        e[16..20].copy_from_slice(&self.len.to_le_bytes());
        e[20..24].copy_from_slice(&self.crc.to_le_bytes());
        let check = entry_check(&e[..24], offset);
        e[24..28].copy_from_slice(&check.to_le_bytes());
        e
    }

    /// The entry in `e`, read at queue offset `offset`: `None` for zeros (never written).
    fn decode(e: &[u8; ENTRY as usize], offset: u64) -> Result<Option<Entry>, String> {
        if e.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let u64_at = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().unwrap_or([0; 4]));
        if u32_at(24) != entry_check(&e[..24], offset) || u32_at(28) != 0 || u64_at(0) == 0 {
            return Err(format!("index entry of offset {offset} fails its checksum"));
        }
        Ok(Some(Entry { segment: u64_at(0), position: u64_at(8), len: u32_at(16), crc: u32_at(20) }))
    }
}

fn entry_check(fields: &[u8], offset: u64) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(fields);
    c.update(&offset.to_le_bytes());
    c.finalize()
}

/// One queue's files.
#[derive(Default)]
struct Queue {
    /// File numbers present on disk.
    numbers: BTreeSet<u64>,
}

/// A file of a topic: its queue and number.
type FileOf = (u32, u64);

/// The open files and what is not synced yet, by topic: every read and write of an entry looks
/// its file up here, so the lookup takes the topic name as it comes (no path is built and
/// hashed, and nothing is allocated, unless the file must be opened).
#[derive(Default)]
struct Open {
    files: HashMap<String, HashMap<FileOf, Arc<File>>>,
    dirty: HashMap<String, BTreeSet<FileOf>>,
}

impl Open {
    /// Files open.
    fn len(&self) -> usize {
        self.files.values().map(HashMap::len).sum()
    }

    fn mark_dirty(&mut self, topic: &str, file: FileOf) {
        match self.dirty.get_mut(topic) {
            Some(files) => {
                files.insert(file);
            }
            None => {
                self.dirty.insert(topic.to_string(), BTreeSet::from([file]));
            }
        }
    }

    fn forget(&mut self, topic: &str, file: FileOf) {
        if let Some(files) = self.files.get_mut(topic) {
            files.remove(&file);
            if files.is_empty() {
                self.files.remove(topic);
            }
        }
        if let Some(files) = self.dirty.get_mut(topic) {
            files.remove(&file);
            if files.is_empty() {
                self.dirty.remove(topic);
            }
        }
    }
}

/// The per-queue indexes of one store directory.
pub struct QueueIndex {
    dir: PathBuf,
    per_file: u64,
    /// Queues by topic, then queue number (looked up by `&str`, without an allocation).
    queues: Mutex<BTreeMap<String, BTreeMap<u32, Queue>>>,
    open: Mutex<Open>,
}

impl std::fmt::Debug for QueueIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueIndex").field("dir", &self.dir).finish()
    }
}

impl QueueIndex {
    /// Opens the indexes in `dir` (creating it), `per_file` offsets to a file.
    pub fn open(dir: &Path, per_file: u64) -> Result<QueueIndex, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut queues = BTreeMap::new();
        for topic_dir in std::fs::read_dir(dir).map_err(io)? {
            let topic_dir = topic_dir.map_err(io)?;
            let name = topic_dir.file_name();
            let Some(topic) = crate::codec::unhex(&name.to_string_lossy()).and_then(|b| String::from_utf8(b).ok())
            else {
                continue;
            };
            for queue_dir in std::fs::read_dir(topic_dir.path()).map_err(io)? {
                let queue_dir = queue_dir.map_err(io)?;
                let Ok(queue) = queue_dir.file_name().to_string_lossy().parse::<u32>() else { continue };
                let mut q = Queue::default();
                for file in std::fs::read_dir(queue_dir.path()).map_err(io)? {
                    let name = file.map_err(io)?.file_name();
                    let name = name.to_string_lossy();
                    if let Some(n) = name.strip_suffix(".qix").and_then(|h| u64::from_str_radix(h, 16).ok()) {
                        q.numbers.insert(n);
                    }
                }
                if !q.numbers.is_empty() {
                    queues.entry(topic.clone()).or_insert_with(BTreeMap::new).insert(queue, q);
                }
            }
        }
        Ok(QueueIndex {
            dir: dir.to_path_buf(),
            per_file: per_file.max(1),
            queues: Mutex::new(queues),
            open: Mutex::new(Open::default()),
        })
    }

    fn queue_dir(&self, topic: &str, queue: u32) -> PathBuf {
        self.dir.join(crate::codec::hex(topic.as_bytes(), false)).join(queue.to_string())
    }

    fn path(&self, topic: &str, queue: u32, number: u64) -> PathBuf {
        self.queue_dir(topic, queue).join(format!("{number:016x}.qix"))
    }

    /// File `number` of the queue, open; created (sparse, its full size) when `create` says so,
    /// else `None` when it does not exist.
    fn file(&self, topic: &str, queue: u32, number: u64, create: bool) -> Result<Option<Arc<File>>, StoreError> {
        let mut open = crate::sync::lock(&self.open);
        if let Some(f) = open.files.get(topic).and_then(|files| files.get(&(queue, number))) {
            return Ok(Some(f.clone()));
        }
        if open.len() >= MAX_OPEN {
            let Open { files, dirty } = &mut *open;
            for (topic, files) in files.iter_mut() {
                let keep = dirty.get(topic);
                files.retain(|f, _| keep.is_some_and(|k| k.contains(f)));
            }
            files.retain(|_, files| !files.is_empty());
        }
        let path = self.path(topic, queue, number);
        let f = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = path.parent().ok_or_else(|| io("index file without a directory"))?;
                std::fs::create_dir_all(parent).map_err(io)?;
                let f =
                    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
                f.set_len(self.per_file * ENTRY).map_err(io)?;
                f
            }
            Err(e) => return Err(io(e)),
        };
        let f = Arc::new(f);
        let files = match open.files.get_mut(topic) {
            Some(files) => files,
            None => open.files.entry(topic.to_string()).or_default(),
        };
        files.insert((queue, number), f.clone());
        Ok(Some(f))
    }

    /// Writes entries (`None` removes one), given in (topic, queue, offset) order with one
    /// change an offset: each run of consecutive offsets in one file is one `pwrite`, and the
    /// bookkeeping is done once a run (durable after the next [`QueueIndex::sync`]).
    pub fn write(&self, changes: &[(&str, u32, u64, Option<Entry>)]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut rest = changes;
        while let Some(&(topic, queue, first, entry)) = rest.first() {
            let number = first / self.per_file;
            let mut run = 1;
            while let Some(&(t, q, o, e)) = rest.get(run) {
                let next = first + run as u64;
                if t != topic
                    || q != queue
                    || o != next
                    || o / self.per_file != number
                    || e.is_some() != entry.is_some()
                {
                    break;
                }
                run += 1;
            }
            let (this, later) = rest.split_at(run);
            rest = later;
            let Some(file) = self.file(topic, queue, number, entry.is_some())? else { continue };
            buf.clear();
            for (_, _, offset, e) in this {
                buf.extend_from_slice(&e.map_or([0; ENTRY as usize], |e| e.encode(*offset)));
            }
            file.write_all_at(&buf, (first % self.per_file) * ENTRY).map_err(io)?;
            crate::sync::lock(&self.open).mark_dirty(topic, (queue, number));
            if entry.is_some() {
                let mut queues = crate::sync::lock(&self.queues);
                let queues = match queues.get_mut(topic) {
                    Some(q) => q,
                    None => queues.entry(topic.to_string()).or_default(),
                };
                queues.entry(queue).or_default().numbers.insert(number);
            }
        }
        Ok(())
    }

    /// Writes the entry of `offset` in the queue.
    #[cfg(test)]
    pub fn put(&self, topic: &str, queue: u32, offset: u64, entry: Entry) -> Result<(), StoreError> {
        self.write(&[(topic, queue, offset, Some(entry))])
    }

    /// The entry of `offset` in the queue; `None` when it has none.
    pub fn get(&self, topic: &str, queue: u32, offset: u64) -> Result<Option<Entry>, StoreError> {
        let Some(file) = self.file(topic, queue, offset / self.per_file, false)? else {
            return Ok(None);
        };
        let mut e = [0u8; ENTRY as usize];
        file.read_exact_at(&mut e, (offset % self.per_file) * ENTRY).map_err(io)?;
        Entry::decode(&e, offset)
            .map_err(|detail| StoreError::Corrupt { key: format!("{topic}/{queue}/{offset}").into_bytes(), detail })
    }

    /// The lowest and highest offsets of the queue with an entry, `None` when it has none.
    pub fn bounds(&self, topic: &str, queue: u32) -> Result<Option<(u64, u64)>, StoreError> {
        let numbers: Vec<u64> = crate::sync::lock(&self.queues)
            .get(topic)
            .and_then(|queues| queues.get(&queue))
            .map(|q| q.numbers.iter().copied().collect())
            .unwrap_or_default();
        let mut first = None;
        for &n in &numbers {
            if let Some(i) = self.written_in(topic, queue, n, false)? {
                first = Some(n * self.per_file + i);
                break;
            }
        }
        let Some(first) = first else { return Ok(None) };
        for &n in numbers.iter().rev() {
            if let Some(i) = self.written_in(topic, queue, n, true)? {
                return Ok(Some((first, n * self.per_file + i)));
            }
        }
        Ok(Some((first, first)))
    }

    /// The first (or, `last`, the last) slot of file `number` holding an entry.
    fn written_in(&self, topic: &str, queue: u32, number: u64, last: bool) -> Result<Option<u64>, StoreError> {
        let Some(file) = self.file(topic, queue, number, false)? else { return Ok(None) };
        let bytes = self.per_file * ENTRY;
        let mut buf = vec![0u8; bytes as usize];
        file.read_exact_at(&mut buf, 0).map_err(io)?;
        let written = |i: &u64| buf[(*i * ENTRY) as usize..((*i + 1) * ENTRY) as usize].iter().any(|b| *b != 0);
        Ok(if last { (0..self.per_file).rev().find(written) } else { (0..self.per_file).find(written) })
    }

    /// Deletes the files of the queue whose every offset is below `offset`.
    pub fn remove_below(&self, topic: &str, queue: u32, offset: u64) -> Result<(), StoreError> {
        let below = offset / self.per_file;
        let gone: Vec<u64> = {
            let mut queues = crate::sync::lock(&self.queues);
            let Some(q) = queues.get_mut(topic).and_then(|queues| queues.get_mut(&queue)) else { return Ok(()) };
            let keep = q.numbers.split_off(&below);
            std::mem::replace(&mut q.numbers, keep).into_iter().collect()
        };
        for n in gone {
            crate::sync::lock(&self.open).forget(topic, (queue, n));
            std::fs::remove_file(self.path(topic, queue, n)).map_err(io)?;
        }
        Ok(())
    }

    /// Makes every entry written so far durable (with the files and directories made for
    /// them).
    pub fn sync(&self) -> Result<(), StoreError> {
        let dirty = std::mem::take(&mut crate::sync::lock(&self.open).dirty);
        let mut dirs = BTreeSet::new();
        for (topic, (queue, number)) in dirty.iter().flat_map(|(t, files)| files.iter().map(move |f| (t, *f))) {
            if let Some(f) = self.file(topic, queue, number, false)? {
                f.sync_all().map_err(io)?;
            }
            let path = self.path(topic, queue, number);
            let mut at = path.parent();
            while let Some(d) = at.filter(|d| d.starts_with(&self.dir)) {
                dirs.insert(d.to_path_buf());
                at = d.parent();
            }
        }
        for d in dirs {
            super::segment_file::sync_dir(&d)?;
        }
        Ok(())
    }

    /// Bytes of the index files (as allocated: they are sparse).
    pub fn size_on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.blocks() * 512,
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        walk(&self.dir)
    }

    /// Every queue with an index file.
    #[cfg(test)]
    pub fn queues(&self) -> Vec<(String, u32)> {
        let queues = crate::sync::lock(&self.queues);
        queues.iter().flat_map(|(topic, queues)| queues.keys().map(move |q| (topic.clone(), *q))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        Entry { segment: 1 + i / 100, position: i * 300, len: 256 + i as u32, crc: 0xC0FF_EE00 ^ i as u32 }
    }

    #[test]
    fn entries_come_back_by_offset_across_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ix = QueueIndex::open(dir.path(), 8).unwrap();
        for o in 5..30 {
            ix.put("orders", 2, o, entry(o)).unwrap();
        }
        ix.put("%DLQ%billing", 0, 0, entry(0)).unwrap();
        ix.sync().unwrap();
        for o in 5..30 {
            assert_eq!(ix.get("orders", 2, o).unwrap(), Some(entry(o)));
        }
        assert_eq!(ix.get("orders", 2, 4).unwrap(), None, "a slot never written");
        assert_eq!(ix.get("orders", 2, 400).unwrap(), None, "a file never made");
        assert_eq!(ix.get("orders", 3, 5).unwrap(), None, "another queue");
        assert_eq!(ix.bounds("orders", 2).unwrap(), Some((5, 29)));
        drop(ix);
        let ix = QueueIndex::open(dir.path(), 8).unwrap();
        assert_eq!(ix.queues(), [("%DLQ%billing".to_string(), 0), ("orders".to_string(), 2)]);
        assert_eq!(ix.bounds("orders", 2).unwrap(), Some((5, 29)));
        assert_eq!(ix.get("orders", 2, 17).unwrap(), Some(entry(17)));
        assert_eq!(ix.bounds("nothing", 0).unwrap(), None);
    }

    #[test]
    fn one_write_of_many_changes_splits_them_by_queue_file_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let ix = QueueIndex::open(dir.path(), 8).unwrap();
        for o in [3, 4, 5] {
            ix.put("t", 0, o, entry(o)).unwrap();
        }
        // Offsets 6..=17 span files 0, 1 and 2; 4 and 5 are removed amid them, offset 9 skipped;
        // another queue and another topic take their own writes; a removal in a file never
        // made creates none.
        let mut changes: Vec<(&str, u32, u64, Option<Entry>)> =
            vec![("t", 0, 2, None), ("t", 0, 4, None), ("t", 0, 5, None)];
        changes.extend((6..18).filter(|o| *o != 9).map(|o| ("t", 0, o, Some(entry(o)))));
        changes.push(("t", 0, 40, None));
        changes.extend((0..3).map(|o| ("t", 1, o, Some(entry(100 + o)))));
        changes.push(("u", 0, 7, Some(entry(7))));
        ix.write(&changes).unwrap();
        let got = |t: &str, q: u32, o: u64| ix.get(t, q, o).unwrap();
        assert_eq!((got("t", 0, 3), got("t", 0, 4), got("t", 0, 5)), (Some(entry(3)), None, None));
        for o in (6..18).filter(|o| *o != 9) {
            assert_eq!(got("t", 0, o), Some(entry(o)), "offset {o}");
        }
        assert_eq!(got("t", 0, 9), None);
        assert!(!ix.path("t", 0, 5).exists(), "a removal made a file");
        assert_eq!((got("t", 1, 2), got("u", 0, 7)), (Some(entry(102)), Some(entry(7))));
        assert_eq!(ix.bounds("t", 0).unwrap(), Some((3, 17)));
        // Every file written is synced and found again after a restart.
        ix.sync().unwrap();
        drop(ix);
        let ix = QueueIndex::open(dir.path(), 8).unwrap();
        assert_eq!(ix.get("t", 0, 16).unwrap(), Some(entry(16)));
        assert_eq!(ix.queues(), [("t".to_string(), 0), ("t".to_string(), 1), ("u".to_string(), 0)]);
    }

    #[test]
    fn retention_deletes_whole_files_below_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let ix = QueueIndex::open(dir.path(), 8).unwrap();
        for o in 0..30 {
            ix.put("t", 0, o, entry(o)).unwrap();
        }
        // Offsets below 19 are gone: files 0 (0..8) and 1 (8..16) go, file 2 (16..24) stays.
        ix.remove_below("t", 0, 19).unwrap();
        assert_eq!(ix.bounds("t", 0).unwrap(), Some((16, 29)));
        assert_eq!(ix.get("t", 0, 15).unwrap(), None);
        assert_eq!(ix.get("t", 0, 16).unwrap(), Some(entry(16)));
        let files = std::fs::read_dir(ix.queue_dir("t", 0)).unwrap().count();
        assert_eq!(files, 2);
        ix.remove_below("t", 0, 1_000).unwrap();
        assert_eq!(ix.bounds("t", 0).unwrap(), None);
        drop(ix);
        assert_eq!(QueueIndex::open(dir.path(), 8).unwrap().bounds("t", 0).unwrap(), None);
    }

    #[test]
    fn a_torn_or_misplaced_entry_is_corrupt_not_a_wrong_place() {
        let dir = tempfile::tempdir().unwrap();
        let ix = QueueIndex::open(dir.path(), 8).unwrap();
        for o in 0..4 {
            ix.put("t", 0, o, entry(o)).unwrap();
        }
        let path = ix.path("t", 0, 0);
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        // Entry 1's bytes copied into slot 2: they name offset 1.
        let mut e = [0u8; ENTRY as usize];
        f.read_exact_at(&mut e, ENTRY).unwrap();
        f.write_all_at(&e, 2 * ENTRY).unwrap();
        assert!(matches!(ix.get("t", 0, 2), Err(StoreError::Corrupt { .. })));
        // Entry 3 half written (its second half never reached the disk).
        f.write_all_at(&[0u8; 16], 3 * ENTRY + 16).unwrap();
        assert!(matches!(ix.get("t", 0, 3), Err(StoreError::Corrupt { .. })));
        assert_eq!(ix.get("t", 0, 1).unwrap(), Some(entry(1)));
    }

    #[test]
    fn more_files_than_stay_open_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ix = QueueIndex::open(dir.path(), 1).unwrap();
        let n = MAX_OPEN as u64 + 100;
        let topic = |o: u64| if o % 2 == 0 { "t" } else { "u" };
        for o in 0..n {
            ix.put(topic(o), 0, o, entry(o)).unwrap();
        }
        // Every file is dirty: none may be closed before the sync.
        assert_eq!(crate::sync::lock(&ix.open).len(), n as usize);
        for o in 0..n {
            assert_eq!(ix.get(topic(o), 0, o).unwrap(), Some(entry(o)), "offset {o}");
        }
        ix.sync().unwrap();
        assert!(crate::sync::lock(&ix.open).dirty.is_empty());
        // The next file to open closes the clean ones.
        ix.put("v", 0, 0, entry(0)).unwrap();
        assert_eq!(crate::sync::lock(&ix.open).len(), 1);
        for o in 0..n {
            assert_eq!(ix.get(topic(o), 0, o).unwrap(), Some(entry(o)), "offset {o}");
        }
        assert_eq!(ix.bounds("t", 0).unwrap(), Some((0, n - 2)));
        assert_eq!(ix.bounds("u", 0).unwrap(), Some((1, n - 1)));
        ix.remove_below("t", 0, n).unwrap();
        let open = crate::sync::lock(&ix.open);
        assert!(!open.files.contains_key("t") && !open.dirty.contains_key("t"));
    }
}
