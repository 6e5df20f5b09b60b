//! The journal: an append-only log of records in preallocated segment files, read back in
//! order after a restart.
//!
//! It is the first part of the broker's own message store (docs/storage.md, "The ceiling" and
//! "Building the store"): one append per group commit and one `fdatasync`, the only durable
//! write on the hot path, with everything else derived from it. This module knows nothing of
//! what a record holds; its contract is:
//!
//! - [`Journal::append`] writes a record after the last one and returns its sequence number
//!   (one more than the previous record's) and position. It is durable after the next
//!   [`Journal::sync`].
//! - After a crash, [`Journal::open`] finds every record that was synced, in order, and
//!   nothing that was not written whole: the journal ends at the first record that fails its
//!   checks, and whatever lies past it (a torn write, a record of an earlier run) is never
//!   read back, even once new records are written over the start of it.
//! - [`Journal::truncate`] drops the records after a given one (the caller's other state never
//!   saw them); [`Journal::remove_before`] deletes whole segments the caller no longer needs.
//!
//! # Layout
//! `<dir>/<id>.jnl`, ids increasing: files written in full with zeros when made
//! ([`super::segment_file`]). A record is a 24-byte header and its payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length (u32, little-endian) |
//! | 4..8 | CRC-32 of the segment id (8 bytes), header bytes 8..24 and the payload |
//! | 8..12 | epoch: the run of the journal that wrote it (u32) |
//! | 12 | kind: 1 a record, 2 the end of this segment (the next record, with this number, is in the next one) |
//! | 13..16 | zero |
//! | 16..24 | sequence number (u64) |
//!
//! A record is valid when its checksum holds, its kind is known, its length fits the segment,
//! its sequence number follows the previous record's and its epoch is not lower. The sequence
//! numbers reject the bytes of a reused file (and the segment id in the checksum, a segment
//! copied under another name); the epoch — one more than the
//! highest found, at every open and every truncation — rejects a record left past the end by
//! an earlier run, which would otherwise follow the new records exactly when they happen to
//! end where it starts.

use super::segment_file::{remove_owned, sync_dir, write_zeros, write_zeros_in_steps, BACKGROUND_STEP};
use super::StoreError;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Bytes of a record's header.
pub const HEADER: u64 = 24;

const KIND_RECORD: u8 = 1;
const KIND_END: u8 = 2;

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Sizes of the segment files.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// The first segment made after open; each next one doubles, up to `max_segment`.
    pub first_segment: u64,
    /// The largest segment (a bigger record gets a segment of its own size).
    pub max_segment: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self { first_segment: 1024 * 1024, max_segment: 64 * 1024 * 1024 }
    }
}

/// Where a record starts (or where the next one will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Where the record starts.
    pub at: Position,
    /// Where the record after it starts: what [`Journal::truncate`] takes to keep this one.
    pub end: Position,
    pub payload: Vec<u8>,
}

/// A record's header, decoded.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: u64,
    crc: u32,
    epoch: u32,
    kind: u8,
    seq: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER as usize] {
        let mut h = [0u8; HEADER as usize];
        h[0..4].copy_from_slice(&(self.len as u32).to_le_bytes());
        h[4..8].copy_from_slice(&self.crc.to_le_bytes());
        h[8..12].copy_from_slice(&self.epoch.to_le_bytes());
        h[12] = self.kind;
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER as usize]) -> Header {
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[16..24]);
        Header {
            len: u64::from(u32_at(0)),
            crc: u32_at(4),
            epoch: u32_at(8),
            kind: h[12],
            seq: u64::from_le_bytes(seq),
        }
    }

    /// The checksum of a record with this header's fields in segment `segment`.
    fn checksum(&self, segment: u64, payload: &[u8]) -> u32 {
        let h = self.encode();
        let mut c = crc32fast::Hasher::new();
        c.update(&segment.to_le_bytes());
        c.update(&h[8..]);
        c.update(payload);
        c.finalize()
    }
}

/// What the previous valid record says the next one must be.
#[derive(Debug, Clone, Copy, Default)]
struct Expect {
    seq: Option<u64>,
    epoch: u32,
}

/// Reads the record at `offset` of segment `id` if it is valid after `expect`.
fn read_valid(file: &File, id: u64, capacity: u64, offset: u64, expect: Expect) -> Option<(Header, Vec<u8>)> {
    if offset + HEADER > capacity {
        return None;
    }
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, offset).ok()?;
    let header = Header::decode(&h);
    let fits = header.len <= capacity - offset - HEADER;
    let known = header.kind == KIND_RECORD || (header.kind == KIND_END && header.len == 0);
    let follows = expect.seq.is_none_or(|s| header.seq == s) && header.epoch >= expect.epoch;
    if !fits || !known || !follows || h[13..16] != [0, 0, 0] {
        return None;
    }
    let mut payload = vec![0u8; header.len as usize];
    file.read_exact_at(&mut payload, offset + HEADER).ok()?;
    (header.checksum(id, &payload) == header.crc).then_some((header, payload))
}

/// The name of the file made ahead for the next segment (removed at open, as every `.tmp`).
const SPARE: &str = "spare.tmp";

/// Where the next spare is made before it becomes [`SPARE`] (under the spare's lock), so that
/// making one never writes to a file a roll may have just taken as its segment.
const SPARE_MAKING: &str = "spare-making.tmp";

/// Removed segments kept for reuse as later segments ([`Journal::remove_before`]) at most.
const KEPT_FOR_REUSE: usize = 2;

fn reusable_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.free.tmp"))
}

/// Where a segment is being deleted ([`remove_owned`]); removed at open, as every `.tmp` file.
fn going_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.gone.tmp"))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.jnl"))
}

/// Makes segment `id` of `size` bytes, durable with its name, and opens it.
fn make_segment(dir: &Path, id: u64, size: u64) -> Result<Arc<File>, StoreError> {
    let tmp = dir.join(format!("{id:016x}.tmp"));
    write_zeros(&tmp, size).map_err(io)?;
    std::fs::rename(&tmp, segment_path(dir, id)).map_err(io)?;
    sync_dir(dir)?;
    open_segment(dir, id)
}

fn open_segment(dir: &Path, id: u64) -> Result<Arc<File>, StoreError> {
    let f = OpenOptions::new().read(true).write(true).open(segment_path(dir, id)).map_err(io)?;
    Ok(Arc::new(f))
}

fn capacity(file: &File) -> Result<u64, StoreError> {
    Ok(file.metadata().map_err(io)?.len())
}

/// The segment being written, behind the journal's one lock.
struct Writer {
    id: u64,
    file: Arc<File>,
    capacity: u64,
    /// Where the next record goes.
    end: u64,
    next_seq: u64,
    epoch: u32,
    /// Written since the last `fdatasync`.
    dirty: bool,
    /// Set by [`Journal::refuse_appends`].
    refused: bool,
}

/// The file made ahead for the next segment ([`Journal::prepare_spare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spare {
    None,
    Making,
    /// Made, of this many bytes: zeroed and synced, or a removed segment renamed.
    Ready(u64),
}

/// The journal in one directory.
pub struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    writer: Mutex<Writer>,
    /// A file for the next segment (zeroed, or a removed segment reused), made off the
    /// writer's path: a roll then only renames it instead of writing up to
    /// [`JournalOptions::max_segment`] of zeros and syncing them while every writer waits.
    spare: Mutex<Spare>,
    /// Removed segments kept to become later segments: their files and sizes.
    reusable: Mutex<Vec<(PathBuf, u64)>>,
    /// Every segment, by id.
    files: RwLock<BTreeMap<u64, Arc<File>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

impl Journal {
    /// Opens the journal in `dir` (creating it empty): reads every segment to find where the
    /// valid records end, and writes new ones from there.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<Journal, StoreError> {
        Self::open_from(dir, options, 0)
    }

    /// [`Journal::open`] reading only the segments from `verify_from` on (the caller needs
    /// no record before it found here; the bodies it reads there carry their own checksums):
    /// the segments before it were closed, end written and synced, before later ones were
    /// made, and reading them all would make an open read the whole journal. When those from
    /// `verify_from` hold no record, earlier ones are read until one does, for the numbers the
    /// next record and epoch follow.
    pub fn open_from(dir: &Path, options: JournalOptions, verify_from: u64) -> Result<Journal, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".jnl").and_then(|h| u64::from_str_radix(h, 16).ok()) {
                ids.push(id);
            } else if name.ends_with(".tmp") {
                // A segment whose making a crash interrupted.
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
        }
        ids.sort_unstable();
        let mut files = BTreeMap::new();
        for &id in &ids {
            files.insert(id, open_segment(dir, id)?);
        }
        let mut start = ids.partition_point(|&id| id < verify_from);
        let (expect, tail) = loop {
            let segments: Vec<_> = files.iter().skip(start).collect();
            let (expect, tail) = Self::scan(dir, &segments)?;
            if expect.seq.is_some() || start == 0 {
                break (expect, tail);
            }
            start -= 1;
        };
        let epoch = expect.epoch + 1;
        let next_seq = expect.seq.unwrap_or(1);
        let (id, file, cap, end) = match tail {
            Some(t) => t,
            None => {
                // No segment yet, or the last one was closed before a crash kept its next
                // from being made.
                let id = ids.last().map_or(1, |l| l + 1);
                let file = make_segment(dir, id, options.first_segment)?;
                files.insert(id, file.clone());
                let cap = capacity(&file)?;
                (id, file, cap, 0)
            }
        };
        let writer = Writer { id, file, capacity: cap, end, next_seq, epoch, dirty: false, refused: false };
        Ok(Journal {
            dir: dir.to_path_buf(),
            options,
            writer: Mutex::new(writer),
            spare: Mutex::new(Spare::None),
            reusable: Mutex::new(Vec::new()),
            files: RwLock::new(files),
        })
    }

    /// Appends a record holding `payload`; returns its sequence number and position. Durable
    /// after the next [`Journal::sync`].
    pub fn append(&self, payload: &[u8]) -> Result<(u64, Position), StoreError> {
        let len = payload.len() as u64;
        if len > u64::from(u32::MAX) - HEADER {
            return Err(StoreError::Io(format!("a journal record of {len} bytes is too large")));
        }
        let mut w = crate::sync::lock(&self.writer);
        if w.refused {
            return Err(StoreError::Io("the journal refuses appends after a failed truncation; restart".into()));
        }
        // Room for the record and, after it, the end of the segment.
        if w.end + HEADER + len + HEADER > w.capacity {
            self.roll(&mut w, len)?;
        }
        let at = Position { segment: w.id, offset: w.end };
        let seq = w.next_seq;
        self.write(&mut w, KIND_RECORD, payload)?;
        Ok((seq, at))
    }

    /// Reads `segments` (the last ones, in order): the numbers the next record follows, and
    /// the last segment when it has no end (where appends go on: its id, file, size and end).
    #[allow(clippy::type_complexity)]
    fn scan(
        dir: &Path,
        segments: &[(&u64, &Arc<File>)],
    ) -> Result<(Expect, Option<(u64, Arc<File>, u64, u64)>), StoreError> {
        let mut expect = Expect::default();
        let mut tail = None;
        for (i, &(&id, file)) in segments.iter().enumerate() {
            let cap = capacity(file)?;
            let last = i + 1 == segments.len();
            let mut offset = 0;
            let ended = loop {
                match read_valid(file, id, cap, offset, expect) {
                    Some((h, payload)) => {
                        // A segment's end carries the number the next record will have.
                        let next = if h.kind == KIND_END { h.seq } else { h.seq + 1 };
                        expect = Expect { seq: Some(next), epoch: h.epoch };
                        offset += HEADER + payload.len() as u64;
                        if h.kind == KIND_END {
                            break true;
                        }
                    }
                    None => break false,
                }
            };
            if !ended && !last {
                // A segment is closed (its end written and synced) before the next is made.
                return Err(StoreError::Corrupt {
                    key: segment_path(dir, id).to_string_lossy().into_owned().into_bytes(),
                    detail: format!("journal segment {id} has an invalid record at {offset} and is not the last"),
                });
            }
            if !ended {
                tail = Some((id, file.clone(), cap, offset));
            }
        }
        Ok((expect, tail))
    }

    /// Writes a record of `kind` at the writer's end.
    fn write(&self, w: &mut Writer, kind: u8, payload: &[u8]) -> Result<(), StoreError> {
        let mut h = Header { len: payload.len() as u64, crc: 0, epoch: w.epoch, kind, seq: w.next_seq };
        h.crc = h.checksum(w.id, payload);
        let mut buf = Vec::with_capacity(HEADER as usize + payload.len());
        buf.extend_from_slice(&h.encode());
        buf.extend_from_slice(payload);
        w.file.write_all_at(&buf, w.end).map_err(io)?;
        w.end += buf.len() as u64;
        if kind == KIND_RECORD {
            w.next_seq += 1;
        }
        w.dirty = true;
        Ok(())
    }

    /// Closes the active segment (its end written and synced) and makes the next, big enough
    /// for a record of `need` bytes.
    fn roll(&self, w: &mut Writer, need: u64) -> Result<(), StoreError> {
        self.write(w, KIND_END, &[])?;
        w.file.sync_data().map_err(io)?;
        let size = self.next_size(w.capacity).max(need + 2 * HEADER);
        let id = w.id + 1;
        // The spare is renamed under its lock: a spare being made meanwhile is made elsewhere
        // and takes its name under the same lock, never while the roll holds the file.
        let spare = {
            let mut spare = crate::sync::lock(&self.spare);
            match *spare {
                Spare::Ready(n) if n >= need + 2 * HEADER => {
                    *spare = Spare::None;
                    std::fs::rename(self.dir.join(SPARE), segment_path(&self.dir, id)).map_err(io)?;
                    true
                }
                _ => false,
            }
        };
        let file = if spare {
            sync_dir(&self.dir)?;
            open_segment(&self.dir, id)?
        } else {
            make_segment(&self.dir, id, size)?
        };
        crate::sync::write(&self.files).insert(id, file.clone());
        *w = Writer {
            id,
            capacity: capacity(&file)?,
            file,
            end: 0,
            next_seq: w.next_seq,
            epoch: w.epoch,
            dirty: false,
            refused: w.refused,
        };
        Ok(())
    }

    /// The size of the segment after one of `capacity` bytes.
    fn next_size(&self, capacity: u64) -> u64 {
        (capacity * 2).clamp(self.options.first_segment, self.options.max_segment)
    }

    /// Makes the file the next segment will be (a removed segment kept for reuse, renamed; or
    /// zeroed and synced), unless one is ready or being made; returns whether it made one.
    /// Called off the writer's path (the store's background thread); appends go on meanwhile,
    /// and a roll that comes first makes its segment itself.
    pub fn prepare_spare(&self) -> Result<bool, StoreError> {
        let want = self.next_size(crate::sync::lock(&self.writer).capacity);
        {
            let mut spare = crate::sync::lock(&self.spare);
            match *spare {
                Spare::Making => return Ok(false),
                Spare::Ready(n) if n >= want => return Ok(false),
                _ => *spare = Spare::Making,
            }
        }
        // A removed segment kept for reuse, big enough, is renamed; otherwise zeros are written.
        let reused = {
            let mut reusable = crate::sync::lock(&self.reusable);
            let big = reusable.iter().position(|(_, size)| *size >= want);
            big.map(|i| reusable.swap_remove(i))
        };
        let making = self.dir.join(SPARE_MAKING);
        let made = match reused {
            Some((path, size)) => std::fs::rename(path, &making).map(|()| size).map_err(io),
            None => write_zeros_in_steps(&making, want, BACKGROUND_STEP).map(|()| want).map_err(io),
        };
        let mut spare = crate::sync::lock(&self.spare);
        let made = made.and_then(|size| std::fs::rename(&making, self.dir.join(SPARE)).map(|()| size).map_err(io));
        *spare = match made {
            Ok(size) => Spare::Ready(size),
            Err(_) => Spare::None,
        };
        made.map(|_| true)
    }

    /// Makes every later [`Journal::append`] fail (until the journal is opened again).
    pub fn refuse_appends(&self) {
        crate::sync::lock(&self.writer).refused = true;
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut w = crate::sync::lock(&self.writer);
        if w.dirty {
            w.file.sync_data().map_err(io)?;
            w.dirty = false;
        }
        Ok(())
    }

    /// Where the next record will go, and its sequence number.
    pub fn end(&self) -> (u64, Position) {
        let w = crate::sync::lock(&self.writer);
        (w.next_seq, Position { segment: w.id, offset: w.end })
    }

    /// The record at `at` (a position [`Journal::append`] or a replay returned).
    pub fn read(&self, at: Position) -> Result<Record, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { key: Vec::new(), detail };
        let file = crate::sync::read(&self.files)
            .get(&at.segment)
            .cloned()
            .ok_or_else(|| corrupt(format!("no journal segment {}", at.segment)))?;
        let cap = capacity(&file)?;
        match read_valid(&file, at.segment, cap, at.offset, Expect::default()) {
            Some((h, payload)) if h.kind == KIND_RECORD => {
                let end = Position { segment: at.segment, offset: at.offset + HEADER + h.len };
                Ok(Record { seq: h.seq, at, end, payload })
            }
            _ => Err(corrupt(format!("no valid journal record at {}:{}", at.segment, at.offset))),
        }
    }

    /// Every record after sequence number `after` (all with `None`), in order, up to the end
    /// as it is now.
    pub fn replay(&self, after: Option<u64>) -> Replay {
        let (_, stop) = self.end();
        let segments: Vec<(u64, Arc<File>)> =
            crate::sync::read(&self.files).iter().map(|(id, f)| (*id, f.clone())).collect();
        Replay { segments, index: 0, offset: 0, stop, after, done: false }
    }

    /// Every record from position `from` (a [`Record::end`], or the start of a segment) on, in
    /// order, up to the end as it is now.
    pub fn replay_from(&self, from: Position) -> Replay {
        let (_, stop) = self.end();
        let segments: Vec<(u64, Arc<File>)> =
            crate::sync::read(&self.files).range(from.segment..).map(|(id, f)| (*id, f.clone())).collect();
        let offset = if segments.first().is_some_and(|(id, _)| *id == from.segment) { from.offset } else { 0 };
        Replay { segments, index: 0, offset, stop, after: None, done: false }
    }

    /// `len` bytes at `position` of segment `segment`, unchecked (the caller holds their
    /// checksum); `None` when the segment is gone.
    pub fn read_raw(&self, segment: u64, position: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = crate::sync::read(&self.files).get(&segment).cloned() else { return Ok(None) };
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, position).map_err(io)?;
        Ok(Some(buf))
    }

    /// Bytes of the segment files, the next one made ahead and the removed ones kept for reuse.
    pub fn size_on_disk(&self) -> u64 {
        let segments: u64 =
            crate::sync::read(&self.files).values().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
        let spare = match *crate::sync::lock(&self.spare) {
            Spare::Ready(size) => size,
            _ => 0,
        };
        segments + spare + crate::sync::lock(&self.reusable).iter().map(|(_, size)| size).sum::<u64>()
    }

    /// Drops every record from `end` on (`end` being a [`Record::end`], or where the first
    /// record of a segment is): segments after its segment are deleted, the next record is
    /// written at `end` with sequence number `next_seq`, and under a new epoch, so that the
    /// dropped records are never read back even where new ones end exactly where they start.
    pub fn truncate(&self, end: Position, next_seq: u64) -> Result<(), StoreError> {
        let mut w = crate::sync::lock(&self.writer);
        let file = crate::sync::read(&self.files)
            .get(&end.segment)
            .cloned()
            .ok_or_else(|| StoreError::Io(format!("no journal segment {} to truncate to", end.segment)))?;
        // The later segments known, and any on disk not known yet (a roll that failed after
        // making its segment and before taking it up): an open refuses a segment after one
        // without an end.
        let mut later: Vec<u64> = crate::sync::read(&self.files).range(end.segment + 1..).map(|(id, _)| *id).collect();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let id = name.to_string_lossy().strip_suffix(".jnl").and_then(|h| u64::from_str_radix(h, 16).ok());
            if let Some(id) = id.filter(|id| *id > end.segment && !later.contains(id)) {
                later.push(id);
            }
        }
        for id in &later {
            std::fs::remove_file(segment_path(&self.dir, *id)).map_err(io)?;
            crate::sync::write(&self.files).remove(id);
        }
        if !later.is_empty() {
            sync_dir(&self.dir)?;
        }
        // The first dropped record made invalid, and durably so: nothing after it is read back.
        let cap = capacity(&file)?;
        if end.offset + HEADER <= cap {
            file.write_all_at(&[0u8; HEADER as usize], end.offset).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let epoch = w.epoch + 1;
        *w = Writer {
            id: end.segment,
            capacity: cap,
            file,
            end: end.offset,
            next_seq,
            epoch,
            dirty: false,
            refused: w.refused,
        };
        Ok(())
    }

    /// Deletes every segment before `segment` (never the one being written); up to
    /// two (`KEPT_FOR_REUSE`) of them, the newest as big as the next segment must be, are kept
    /// (renamed) for [`Self::prepare_spare`] to make later segments of: their blocks are
    /// allocated and written, so records go over them with no zeros written first, and a
    /// journal whose old segments go (retention) stops writing zeros ahead of itself. Their old
    /// records are never read as new ones: a record's checksum covers its segment's id, and
    /// sequence numbers only grow.
    pub fn remove_before(&self, segment: u64) -> Result<(), StoreError> {
        let (active, want) = {
            let w = crate::sync::lock(&self.writer);
            (w.id, self.next_size(w.capacity))
        };
        let old: Vec<(u64, Arc<File>)> =
            crate::sync::read(&self.files).range(..segment.min(active)).map(|(id, f)| (*id, f.clone())).collect();
        let removed = !old.is_empty();
        let mut going = Vec::new();
        for (id, file) in old.into_iter().rev() {
            crate::sync::write(&self.files).remove(&id);
            let size = capacity(&file)?;
            let mut reusable = crate::sync::lock(&self.reusable);
            if reusable.len() < KEPT_FOR_REUSE && size >= want {
                let kept = reusable_path(&self.dir, id);
                std::fs::rename(segment_path(&self.dir, id), &kept).map_err(io)?;
                reusable.push((kept, size));
            } else {
                // Renamed first: one a crash leaves cut short is a file the next open removes.
                let path = going_path(&self.dir, id);
                std::fs::rename(segment_path(&self.dir, id), &path).map_err(io)?;
                going.push((path, file));
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        for (path, file) in going {
            remove_owned(file, &path, |f| f).map_err(io)?;
        }
        Ok(())
    }

    /// The segment ids, oldest first.
    pub fn segments(&self) -> Vec<u64> {
        crate::sync::read(&self.files).keys().copied().collect()
    }
}

/// The records of a journal in order ([`Journal::replay`]).
pub struct Replay {
    segments: Vec<(u64, Arc<File>)>,
    index: usize,
    offset: u64,
    stop: Position,
    after: Option<u64>,
    done: bool,
}

impl Iterator for Replay {
    type Item = Result<Record, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let (id, file) = self.segments.get(self.index).cloned()?;
            let at = Position { segment: id, offset: self.offset };
            if at >= self.stop {
                self.done = true;
                return None;
            }
            let cap = match capacity(&file) {
                Ok(c) => c,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            let Some((h, payload)) = read_valid(&file, id, cap, self.offset, Expect::default()) else {
                self.done = true;
                return Some(Err(StoreError::Corrupt {
                    key: Vec::new(),
                    detail: format!("journal record at {id}:{} became invalid", self.offset),
                }));
            };
            if h.kind == KIND_END {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            self.offset += HEADER + h.len;
            if self.after.is_some_and(|a| h.seq <= a) {
                continue;
            }
            let end = Position { segment: id, offset: self.offset };
            return Some(Ok(Record { seq: h.seq, at, end, payload }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small segments, so that a few records fill one.
    const SMALL: JournalOptions = JournalOptions { first_segment: 4096, max_segment: 8192 };

    fn payload(i: u64) -> Vec<u8> {
        format!("record {i:04}").into_bytes().repeat(30)
    }

    fn all(j: &Journal) -> Vec<(u64, Vec<u8>)> {
        j.replay(None).map(|r| r.map(|r| (r.seq, r.payload))).collect::<Result<_, _>>().unwrap()
    }

    fn append_n(j: &Journal, range: std::ops::Range<u64>) -> Vec<(u64, Position)> {
        let out = range.map(|i| j.append(&payload(i)).unwrap()).collect();
        j.sync().unwrap();
        out
    }

    /// Flips one byte of segment `id` at `offset`.
    fn flip(dir: &Path, id: u64, offset: u64) {
        let f = OpenOptions::new().read(true).write(true).open(segment_path(dir, id)).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let written = append_n(&j, 0..100);
        assert!(j.segments().len() >= 4, "{:?}", j.segments());
        let seqs: Vec<u64> = written.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        drop(j);
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let got = all(&j);
        assert_eq!(got, (0..100).map(|i| (i + 1, payload(i))).collect::<Vec<_>>());
        // New records follow the old ones, read by position too.
        let (seq, at) = j.append(b"after").unwrap();
        j.sync().unwrap();
        assert_eq!(seq, 101, "no record was lost or repeated");
        assert_eq!(j.read(at).unwrap().payload, b"after");
        assert_eq!(j.read(written[42].1).unwrap().payload, payload(42));
        // A replay after a sequence number starts past it.
        let tail: Vec<u64> = j.replay(Some(98)).map(|r| r.unwrap().seq).collect();
        assert_eq!(tail, [99, 100, 101]);
    }

    #[test]
    fn an_open_from_a_later_segment_reads_only_from_there_and_goes_on_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let written = append_n(&j, 0..100);
        let segments = j.segments();
        assert!(segments.len() >= 4, "{segments:?}");
        drop(j);
        // A damaged record in a segment before `verify_from` is not read at open (a plain open
        // refuses it), yet every later record is there and new ones follow the last.
        let early = written[1].1;
        flip(dir.path(), early.segment, early.offset + HEADER);
        assert!(matches!(Journal::open(dir.path(), SMALL), Err(StoreError::Corrupt { .. })));
        let from = segments[segments.len() - 2];
        let j = Journal::open_from(dir.path(), SMALL, from).unwrap();
        assert_eq!(j.read(written[99].1).unwrap().payload, payload(99));
        let (seq, at) = j.append(b"after").unwrap();
        j.sync().unwrap();
        assert_eq!(seq, 101);
        assert_eq!(j.read(at).unwrap().payload, b"after");
        // Segments from `verify_from` on with no record: the numbers come from earlier ones.
        drop(j);
        let past = segments.last().unwrap() + 10;
        let j = Journal::open_from(dir.path(), SMALL, past).unwrap();
        assert_eq!(j.end().0, 102, "the next record follows the last one written");
    }

    #[test]
    fn a_torn_record_ends_the_journal_and_what_lay_past_it_never_returns() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let written = append_n(&j, 0..10);
        drop(j);
        // Record 7 (index 6) torn: its payload's last byte never reached the disk.
        let seventh = written[6].1;
        flip(dir.path(), seventh.segment, seventh.offset + HEADER + payload(6).len() as u64 - 1);
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(all(&j).len(), 6);
        // One new record of the same size as the torn one ends exactly where record 8 starts;
        // record 8 must not come back after it (it belongs to an earlier run).
        let (seq, at) = j.append(&payload(99)).unwrap();
        j.sync().unwrap();
        assert_eq!((seq, at), (7, seventh));
        drop(j);
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let got = all(&j);
        assert_eq!(got.len(), 7, "{:?}", got.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        assert_eq!(got[6], (7, payload(99)));
        assert_eq!(j.end().0, 8);
    }

    #[test]
    fn truncation_drops_records_for_good_and_deletes_later_segments() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        append_n(&j, 0..60);
        let segments = j.segments();
        assert!(segments.len() >= 3, "{segments:?}");
        // Keep the records up to 20 (seq 21 and on dropped).
        let keep = j.replay(None).map(Result::unwrap).find(|r| r.seq == 20).unwrap();
        j.truncate(keep.end, 21).unwrap();
        assert!(j.segments().len() < segments.len());
        assert_eq!(all(&j).len(), 20);
        // Dropped even without a new record after it, across a restart.
        drop(j);
        let j = Journal::open(dir.path(), SMALL).unwrap();
        assert_eq!(all(&j).len(), 20);
        // New records of the dropped ones' sizes: only they follow.
        append_n(&j, 100..105);
        drop(j);
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let got = all(&j);
        assert_eq!(got.len(), 25);
        assert_eq!(got[20].1, payload(100));
        assert!(got.windows(2).all(|w| w[1].0 > w[0].0), "sequence numbers increase");
    }

    #[test]
    fn a_reused_file_or_a_missing_next_segment_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        append_n(&j, 0..20);
        let segments = j.segments();
        let (first, active) = (segments[0], *segments.last().unwrap());
        drop(j);
        // The active segment's bytes replaced by an older segment's (a reused file): none of
        // its records follows the last valid one, so none is read back.
        let before = {
            let j = Journal::open(dir.path(), SMALL).unwrap();
            all(&j).iter().filter(|(_, p)| !p.is_empty()).count()
        };
        let in_active = before - {
            let j = Journal::open(dir.path(), SMALL).unwrap();
            j.replay(None).map(Result::unwrap).filter(|r| r.at.segment != active).count()
        };
        std::fs::copy(segment_path(dir.path(), first), segment_path(dir.path(), active)).unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        assert_eq!(all(&j).len(), before - in_active);
        drop(j);
        // A crash after a segment was closed but before the next was made: the journal goes on
        // in a new segment.
        std::fs::remove_file(segment_path(dir.path(), active)).unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let n = all(&j).len();
        append_n(&j, 200..201);
        drop(j);
        let j = Journal::open(dir.path(), SMALL).unwrap();
        assert_eq!(all(&j).len(), n + 1);
    }

    #[test]
    fn a_damaged_closed_segment_refuses_to_open_and_a_damaged_read_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let written = append_n(&j, 0..40);
        let first = j.segments()[0];
        drop(j);
        flip(dir.path(), first, HEADER + 3);
        let err = Journal::open(dir.path(), SMALL).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        flip(dir.path(), first, HEADER + 3);
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let last = written.last().unwrap().1;
        flip(dir.path(), last.segment, last.offset + HEADER);
        assert!(matches!(j.read(last), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn old_segments_are_removed_and_the_rest_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let written = append_n(&j, 0..60);
        let keep_from = written[30].1.segment;
        j.remove_before(keep_from).unwrap();
        assert_eq!(j.segments()[0], keep_from);
        drop(j);
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let got = all(&j);
        assert_eq!(got.last().unwrap(), &(60, payload(59)));
        assert!(got.len() < 60 && got.len() >= 30, "{}", got.len());
        // Never the segment being written.
        j.remove_before(u64::MAX).unwrap();
        assert_eq!(j.segments().len(), 1);
        assert_eq!(all(&j).last().unwrap(), &(60, payload(59)));
    }

    #[test]
    fn a_truncation_removes_a_later_segment_a_failed_roll_left_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        let written = append_n(&j, 0..3);
        // A roll made the next segment on disk and failed before taking it up (the directory
        // sync or the open failed): the append fails and its record is dropped.
        let active = written[2].1.segment;
        make_segment(dir.path(), active + 1, SMALL.first_segment).unwrap();
        let end = j.read(written[1].1).unwrap().end;
        j.truncate(end, written[2].0).unwrap();
        assert!(!segment_path(dir.path(), active + 1).exists(), "the unknown later segment stays");
        drop(j);
        // An open accepts the journal: no segment after one without an end.
        let j = Journal::open(dir.path(), SMALL).unwrap();
        assert_eq!(all(&j).into_iter().map(|(seq, _)| seq).collect::<Vec<_>>(), [written[0].0, written[1].0]);
    }

    #[test]
    fn deleted_segments_leave_no_file_and_one_a_crash_left_being_deleted_goes_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        append_n(&j, 0..60);
        let files = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = files(dir.path()).iter().filter(|n| n.ends_with(".jnl")).count();
        j.remove_before(u64::MAX).unwrap();
        let after = files(dir.path());
        let kept = after.iter().filter(|n| n.ends_with(".free.tmp")).count();
        assert_eq!(after.iter().filter(|n| n.ends_with(".jnl")).count(), 1, "{after:?}");
        assert_eq!(kept, KEPT_FOR_REUSE.min(before - 1), "{after:?}");
        assert!(!after.iter().any(|n| n.ends_with(".gone.tmp")), "deleted, not left renamed: {after:?}");
        drop(j);
        // A crash while a segment was being cut short: the renamed rest is no segment.
        let stale = going_path(dir.path(), 1);
        std::fs::write(&stale, [0x5a; 100]).unwrap();
        let j = Journal::open(dir.path(), SMALL).unwrap();
        assert!(!stale.exists(), "removed at open");
        assert_eq!(all(&j).last().unwrap(), &(60, payload(59)));
    }

    #[test]
    fn removed_segments_become_later_ones_and_their_old_records_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        // Every segment of one size, so that an old one is as big as the next must be.
        let options = JournalOptions { first_segment: 4096, max_segment: 4096 };
        let j = Journal::open(dir.path(), options).unwrap();
        let written = append_n(&j, 0..80);
        let keep_from = written[70].1.segment;
        let removed: Vec<u64> = j.segments().into_iter().filter(|&s| s < keep_from).collect();
        assert!(removed.len() > KEPT_FOR_REUSE, "{removed:?}");
        let newest = *removed.last().unwrap();
        j.remove_before(keep_from).unwrap();
        assert_eq!(j.segments()[0], keep_from);
        assert!(removed.iter().all(|&id| !segment_path(dir.path(), id).exists()));
        let kept: Vec<u64> = removed.iter().copied().filter(|&id| reusable_path(dir.path(), id).exists()).collect();
        assert_eq!(kept.len(), KEPT_FOR_REUSE, "the newest kept, the rest deleted: {kept:?}");
        assert!(kept.contains(&newest));
        assert_eq!(j.size_on_disk(), (j.segments().len() + KEPT_FOR_REUSE) as u64 * 4096, "kept files count");
        // The next segment is made of a kept one: renamed with its old bytes, not zeros.
        let kept_bytes: Vec<Vec<u8>> =
            kept.iter().map(|&id| std::fs::read(reusable_path(dir.path(), id)).unwrap()).collect();
        assert!(j.prepare_spare().unwrap());
        let spare = std::fs::read(dir.path().join(SPARE)).unwrap();
        assert!(kept_bytes.contains(&spare) && spare.iter().any(|&b| b != 0), "a kept segment, not zeros");
        // Appends until the roll takes it: one new record at its start, its old ones after it.
        let active = *j.segments().last().unwrap();
        let mut i = 100;
        while *j.segments().last().unwrap() == active {
            append_n(&j, i..i + 1);
            i += 1;
        }
        let expected = all(&j);
        assert_eq!(expected.last().unwrap(), &(80 + i - 100, payload(i - 1)));
        drop(j);
        // After a restart: exactly the records written, none of the reused file's old ones.
        let j = Journal::open(dir.path(), options).unwrap();
        assert_eq!(all(&j), expected);
        assert!(kept.iter().all(|&id| !reusable_path(dir.path(), id).exists()), "removed at open");
        let (seq, _) = j.append(b"next").unwrap();
        assert_eq!(seq, 81 + i - 100);
    }

    #[test]
    fn a_segment_made_ahead_is_the_next_one_and_a_crash_leaves_none_behind() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions { first_segment: 4096, max_segment: 16384 };
        let j = Journal::open(dir.path(), options).unwrap();
        assert!(j.prepare_spare().unwrap());
        assert!(!j.prepare_spare().unwrap(), "one is ready");
        assert_eq!(std::fs::metadata(dir.path().join(SPARE)).unwrap().len(), 8192, "the size after the first");
        append_n(&j, 0..40);
        j.sync().unwrap();
        assert!(j.segments().len() >= 2, "{:?}", j.segments());
        assert!(!dir.path().join(SPARE).exists(), "taken by the roll");
        assert_eq!(all(&j).len(), 40);
        j.prepare_spare().unwrap();
        drop(j);
        let j = Journal::open(dir.path(), options).unwrap();
        assert!(!dir.path().join(SPARE).exists(), "removed at open");
        assert_eq!(all(&j), (0..40).map(|i| (i + 1, payload(i))).collect::<Vec<_>>());
    }
}
