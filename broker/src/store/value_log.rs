//! The value log: message records kept out of sled, in preallocated segment files.
//!
//! Why: sled 0.34 rewrites whole leaf nodes (16 entries) as a tree grows and consolidates,
//! so every byte stored in it is written to disk about four times, and a 256-byte send cost
//! 2.8 KB of sled log writes and 5.8 KB at the device (docs/storage.md, "Where the bytes go").
//! With the value log, sled holds a 20-byte [`Pointer`] per message chunk and the record is
//! written once, here.
//!
//! # Layout
//! `<data dir>/values/<id>.seg`: files of zeros written in full when created (so that writing
//! into them later changes no file-system metadata, and `fdatasync` commits no ext4 journal),
//! then filled front to back. A record is found only through its pointer (segment, offset,
//! length, CRC-32); nothing ever scans a segment. `spare` is a segment made ahead of need.
//!
//! # Durability and crash order
//! [`ValueLog`] is used by `SledStore::apply` under one lock: the chunk values of a batch are
//! written and `fdatasync`ed here *before* the batch (with their pointers) goes to sled. sled
//! may write its log at any time afterwards, so a pointer on disk always names bytes already on
//! disk. Records written by a batch that never reached sled are unreferenced bytes.
//!
//! # Space
//! The number of live pointers into each segment is kept in sled, in the same atomic batch as
//! the pointers (keys under the reserved tag [`RESERVED`]). A segment whose count reaches zero
//! is recycled (or deleted) once that count is durable, by `SledStore::flush`. At open, segment
//! files with no live pointer are deleted and writing starts in a fresh segment.

use super::segment_file::{sync_dir, write_zeros};
use super::StoreError;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The first byte of every key the sled store keeps for itself (never a tag of `store::keys`).
pub const RESERVED: u8 = 0xFF;

/// The size of the first segment written after open; each next one doubles, up to
/// [`MAX_SEGMENT`] (a test broker with a few messages writes 1 MiB of zeros, not 32).
const FIRST_SEGMENT: u64 = 1024 * 1024;
/// The largest segment.
const MAX_SEGMENT: u64 = 32 * 1024 * 1024;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Where one value is: what sled stores under the value's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    segment: u64,
    offset: u32,
    len: u32,
    crc: u32,
}

impl Pointer {
    pub const LEN: usize = 20;

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.segment.to_be_bytes());
        v.extend_from_slice(&self.offset.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.crc.to_be_bytes());
        v
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Result<Pointer, StoreError> {
        let corrupt =
            || StoreError::Corrupt { key: key.to_vec(), detail: format!("value pointer of {} bytes", v.len()) };
        if v.len() != Self::LEN {
            return Err(corrupt());
        }
        let u32_at = |i: usize| v.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
        let segment = v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match (segment, u32_at(8), u32_at(12), u32_at(16)) {
            (Some(segment), Some(offset), Some(len), Some(crc)) => Ok(Pointer { segment, offset, len, crc }),
            _ => Err(corrupt()),
        }
    }
}

/// The sled key holding the live-pointer count of `segment`.
pub fn count_key(segment: u64) -> Vec<u8> {
    let mut k = vec![RESERVED, b'c'];
    k.extend_from_slice(&segment.to_be_bytes());
    k
}

/// The prefix of every count key.
pub fn count_prefix() -> Vec<u8> {
    vec![RESERVED, b'c']
}

/// A count entry read back from sled: `(segment, live pointers)`; `None` if malformed.
pub fn parse_count(key: &[u8], value: &[u8]) -> Option<(u64, u64)> {
    let segment = key.strip_prefix(count_prefix().as_slice())?.try_into().ok().map(u64::from_be_bytes)?;
    Some((segment, u64::from_be_bytes(value.try_into().ok()?)))
}

/// Whether `key` is one of the store's own (never written by a batch, never returned).
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&RESERVED)
}

/// The sled key whose presence says that this store keeps message chunks in a value log.
pub fn enabled_key() -> Vec<u8> {
    vec![RESERVED, b'v']
}

/// A write of sled a batch carries: a live count, or its removal (`None`).
pub type CountWrite = (Vec<u8>, Option<Vec<u8>>);

/// The segment being filled.
struct Active {
    id: u64,
    file: Arc<File>,
    capacity: u64,
    /// Where the next value goes.
    end: u64,
    /// Bytes appended by the current batch, not yet written: they start at `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    /// Whether this batch wrote to the file since its last `fdatasync`.
    dirty: bool,
}

/// The writer's state, behind the log's one lock.
struct Writer {
    active: Active,
    next_id: u64,
    /// Live pointers per segment, as durable in sled (after the last successful apply).
    live: BTreeMap<u64, u64>,
    /// Segments whose count reached zero: recycled at the next flush.
    to_free: Vec<u64>,
}

/// The value log of one store directory.
pub struct ValueLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Open read handles by segment.
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// Whether a background thread is making the spare segment.
    making_spare: Arc<AtomicBool>,
}

impl std::fmt::Debug for ValueLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueLog").field("dir", &self.dir).finish()
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

impl ValueLog {
    /// Opens the value log in `dir` with the live counts read from sled: deletes segments with
    /// no live pointer and starts writing in a new segment.
    pub fn open(dir: &Path, live: BTreeMap<u64, u64>) -> Result<ValueLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut max_id = live.keys().next_back().copied().unwrap_or(0);
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|h| u64::from_str_radix(h, 16).ok()) {
                max_id = max_id.max(id);
                if !live.contains_key(&id) {
                    std::fs::remove_file(entry.path()).map_err(io)?;
                }
            } else if name.ends_with(".tmp") {
                // A segment whose making a crash interrupted.
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
        }
        let making_spare = Arc::new(AtomicBool::new(false));
        let active = new_segment(dir, max_id + 1, FIRST_SEGMENT, 0)?;
        let files = RwLock::new(HashMap::from([(active.id, active.file.clone())]));
        let writer = Writer { next_id: active.id + 1, active, live, to_free: Vec::new() };
        Ok(ValueLog { dir: dir.to_path_buf(), writer: Mutex::new(writer), files, making_spare })
    }

    /// Starts a batch: the writer, locked until the batch is applied to sled (or failed).
    pub fn begin(&self) -> Batch<'_> {
        Batch { log: self, writer: crate::sync::lock(&self.writer), delta: HashMap::new(), written: Vec::new() }
    }

    /// The value `p` points at; `None` when its segment is gone (recycled after its last
    /// pointer was deleted: the caller read a pointer that no longer exists).
    pub fn read(&self, key: &[u8], p: &Pointer) -> Result<Option<Vec<u8>>, StoreError> {
        let file = match self.file(p.segment)? {
            Some(f) => f,
            None => return Ok(None),
        };
        let mut buf = vec![0u8; p.len as usize];
        file.read_exact_at(&mut buf, u64::from(p.offset)).map_err(io)?;
        if crc32fast::hash(&buf) != p.crc {
            return Err(StoreError::Corrupt {
                key: key.to_vec(),
                detail: format!("value at {}:{} fails its checksum", p.segment, p.offset),
            });
        }
        Ok(Some(buf))
    }

    fn file(&self, id: u64) -> Result<Option<Arc<File>>, StoreError> {
        if let Some(f) = crate::sync::read(&self.files).get(&id) {
            return Ok(Some(f.clone()));
        }
        match File::open(segment_path(&self.dir, id)) {
            Ok(f) => {
                let f = Arc::new(f);
                crate::sync::write(&self.files).insert(id, f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// The segments emptied by batches already applied to sled: the caller flushes sled, then
    /// hands them to [`ValueLog::recycle`]. (Taken before the flush, so that a batch applied
    /// while it runs waits for the next one.)
    pub fn take_freed(&self) -> Vec<u64> {
        std::mem::take(&mut crate::sync::lock(&self.writer).to_free)
    }

    /// Recycles segments whose last pointer was deleted by a batch that is now durable: one
    /// becomes the spare, the others are deleted.
    pub fn recycle(&self, freed: Vec<u64>) -> Result<(), StoreError> {
        let spare = self.dir.join("spare");
        for id in freed {
            crate::sync::write(&self.files).remove(&id);
            let path = segment_path(&self.dir, id);
            let full_size = std::fs::metadata(&path).is_ok_and(|m| m.len() == MAX_SEGMENT);
            if full_size && !spare.exists() && !self.making_spare.load(Ordering::Acquire) {
                std::fs::rename(&path, &spare).map_err(io)?;
            } else {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        Ok(())
    }

    /// Bytes of the segment files.
    pub fn size_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// Makes a spare segment of `size` bytes in the background, unless one exists or is
    /// being made.
    fn make_spare_later(&self, size: u64) {
        if self.dir.join("spare").exists() || self.making_spare.swap(true, Ordering::AcqRel) {
            return;
        }
        let dir = self.dir.clone();
        let flag = self.making_spare.clone();
        std::thread::spawn(move || {
            let tmp = dir.join("spare.tmp");
            let made = write_zeros(&tmp, size).and_then(|()| std::fs::rename(&tmp, dir.join("spare")));
            if let Err(e) = made {
                // Not fatal: the next roll makes its segment itself.
                tracing::warn!(error = %e, "could not make a spare value-log segment");
                let _ = std::fs::remove_file(&tmp);
            }
            flag.store(false, Ordering::Release);
        });
    }
}

/// Takes the spare segment (if it holds `need` bytes) or writes a new one of `size` bytes, as
/// segment `id`.
fn new_segment(dir: &Path, id: u64, size: u64, need: u64) -> Result<Active, StoreError> {
    let path = segment_path(dir, id);
    let spare = dir.join("spare");
    let spare_fits = std::fs::metadata(&spare).is_ok_and(|m| m.len() >= need);
    if !spare_fits || std::fs::rename(&spare, &path).is_err() {
        let tmp = dir.join(format!("{id:016x}.tmp"));
        write_zeros(&tmp, size).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    // The segment's name must be durable before any pointer into it can be.
    sync_dir(dir)?;
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io)?;
    let capacity = file.metadata().map_err(io)?.len();
    Ok(Active { id, file: Arc::new(file), capacity, end: 0, pending: Vec::new(), pending_at: 0, dirty: false })
}

/// The value-log side of one sled batch: appends values, counts pointers, and on success
/// publishes the new counts.
pub struct Batch<'a> {
    log: &'a ValueLog,
    writer: std::sync::MutexGuard<'a, Writer>,
    /// Change of each touched segment's live count.
    delta: HashMap<u64, i64>,
    /// Segments this batch wrote to (all but the active one are full and synced).
    written: Vec<u64>,
}

impl Batch<'_> {
    /// Appends `value`; returns its pointer (counted live).
    pub fn append(&mut self, value: &[u8]) -> Result<Pointer, StoreError> {
        let len = value.len() as u64;
        if len > MAX_SEGMENT {
            return Err(StoreError::Io(format!("value of {len} bytes is larger than a value-log segment")));
        }
        if self.writer.active.end + len > self.writer.active.capacity {
            self.roll(len)?;
        }
        let w = &mut *self.writer;
        let a = &mut w.active;
        if a.pending.is_empty() {
            a.pending_at = a.end;
        }
        let p = Pointer { segment: a.id, offset: a.end as u32, len: len as u32, crc: crc32fast::hash(value) };
        a.pending.extend_from_slice(value);
        a.end += len;
        *self.delta.entry(a.id).or_default() += 1;
        Ok(p)
    }

    /// Counts `p` (a pointer the batch overwrites or deletes) as no longer live.
    pub fn release(&mut self, p: &Pointer) {
        *self.delta.entry(p.segment).or_default() -= 1;
    }

    /// Writes what is pending in the active segment (without syncing).
    fn write_pending(&mut self) -> Result<(), StoreError> {
        let a = &mut self.writer.active;
        if !a.pending.is_empty() {
            a.file.write_all_at(&a.pending, a.pending_at).map_err(io)?;
            a.pending.clear();
            a.dirty = true;
        }
        Ok(())
    }

    /// Closes the full active segment (written and synced) and opens the next one, at least
    /// big enough for a value of `need` bytes.
    fn roll(&mut self, need: u64) -> Result<(), StoreError> {
        self.write_pending()?;
        if self.writer.active.dirty {
            self.writer.active.file.sync_data().map_err(io)?;
        }
        let size = (self.writer.active.capacity * 2).clamp(FIRST_SEGMENT, MAX_SEGMENT).max(need);
        let id = self.writer.next_id;
        let next = new_segment(&self.log.dir, id, size, need)?;
        self.writer.next_id += 1;
        crate::sync::write(&self.log.files).insert(id, next.file.clone());
        let old = std::mem::replace(&mut self.writer.active, next);
        self.written.push(old.id);
        self.log.make_spare_later((size * 2).min(MAX_SEGMENT));
        Ok(())
    }

    /// The live count of every segment this batch touched, once it is applied.
    fn new_counts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.delta.iter().map(|(&segment, &d)| {
            let now = self.writer.live.get(&segment).copied().unwrap_or(0) as i64 + d;
            (segment, now.max(0) as u64)
        })
    }

    /// Makes every appended value durable; returns the sled writes of the new live counts.
    pub fn sync(&mut self) -> Result<Vec<CountWrite>, StoreError> {
        self.write_pending()?;
        if self.writer.active.dirty {
            self.writer.active.file.sync_data().map_err(io)?;
            self.writer.active.dirty = false;
        }
        let writes = self
            .new_counts()
            .map(|(segment, now)| (count_key(segment), (now > 0).then(|| now.to_be_bytes().to_vec())))
            .collect();
        Ok(writes)
    }

    /// The batch reached sled: its counts are now the live ones.
    pub fn applied(mut self) {
        let active = self.writer.active.id;
        let counts: Vec<(u64, u64)> = self.new_counts().collect();
        for (segment, now) in counts {
            if now > 0 {
                self.writer.live.insert(segment, now);
            } else {
                self.writer.live.remove(&segment);
                if segment != active {
                    self.writer.to_free.push(segment);
                }
            }
        }
        // A full segment whose every value was overwritten within this batch.
        for segment in std::mem::take(&mut self.written) {
            if !self.writer.live.contains_key(&segment) && !self.writer.to_free.contains(&segment) {
                self.writer.to_free.push(segment);
            }
        }
    }
}
