//! Zeros written ahead of sled's log, a page at a time, so that sled's writes land in
//! page-sized page-cache folios.
//!
//! Why: Linux (6.x, ext4) caches a file in folios as large as the writes that created them, and
//! a later small write into a large folio makes `fdatasync` write the whole folio back. sled
//! appends its log in writes of up to a segment, so each group commit's few hundred bytes
//! rewrote tens of KiB at the device (docs/storage.md, "Where the bytes go"). Zeros written a
//! page at a time ahead of sled's tip leave page-sized folios behind; sled then overwrites them
//! (`bench/results/sled-prefill-2026-12-02.txt`).
//!
//! Safe for sled: zero is sled's own filler (message kind 0, "corrupted"), a zero segment header
//! fails its checksum and is skipped by recovery, and at open sled counts segments past its
//! last one as free and zeroes them itself.
//!
//! Safe for the data: zeros are only ever written past the file's current end or into the
//! zeros already written, and only at a point where sled has no log write in flight (right after
//! its flush, with applies excluded by the caller): sled's tip only moves forward, so what it
//! writes later lands over the zeros, never under them.

use super::value_log::write_zeros_at;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// sled's log segment (its default, which txmq keeps): new segments are taken at multiples of it.
const SEGMENT: u64 = 512 * 1024;
/// How far ahead of sled's tip the zeros reach.
const AHEAD: u64 = 8 * 1024 * 1024;
/// How much is written each time sled comes within [`AHEAD`] of their end: one segment, so that
/// the group commit that writes it waits a fraction of a millisecond.
const STEP: u64 = SEGMENT;

/// The zeros ahead of one sled log file.
#[derive(Debug)]
pub struct Prefill {
    file: File,
    /// Where the zeros written since open start (a segment boundary: sled's tip at open).
    start: u64,
    /// Where they end.
    end: u64,
}

impl Prefill {
    /// Writes the first zeros past the end of sled's log at `path`. Call it while sled writes
    /// nothing (right after opening it).
    pub fn open(path: &Path) -> std::io::Result<Prefill> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut p = Prefill { file, start: 0, end: 0 };
        p.restart_at_file_end()?;
        Ok(p)
    }

    /// Keeps the zeros 8 MiB ahead of sled's tip. Call it only while sled writes nothing: after
    /// `Db::flush` returned and before the next apply.
    pub fn extend(&mut self) -> std::io::Result<()> {
        if self.file.metadata()?.len() > self.end {
            // sled wrote past the zeros (one huge batch): start again from its end.
            return self.restart_at_file_end();
        }
        let mut steps = 0;
        while steps < 16 && self.end >= self.start + AHEAD && self.segment_used(self.end - AHEAD)? {
            self.write_zeros(STEP)?;
            steps += 1;
        }
        Ok(())
    }

    fn restart_at_file_end(&mut self) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        self.start = len.div_ceil(SEGMENT) * SEGMENT;
        self.end = len;
        self.write_zeros(self.start - len + AHEAD)
    }

    /// Whether sled has begun the segment holding `at` (its header is written).
    fn segment_used(&self, at: u64) -> std::io::Result<bool> {
        let mut header = [0u8; 32];
        self.file.read_exact_at(&mut header, at / SEGMENT * SEGMENT)?;
        Ok(header.iter().any(|b| *b != 0))
    }

    /// Appends `n` bytes of zeros, a page at a time.
    fn write_zeros(&mut self, n: u64) -> std::io::Result<()> {
        write_zeros_at(&self.file, self.end, n)?;
        self.end += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_follow_the_writer_and_never_cover_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let mut p = Prefill::open(&path).unwrap();
        assert_eq!(p.start, SEGMENT);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT + AHEAD);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[..1000].iter().all(|b| *b == 7), "what was there is kept");
        assert!(bytes[1000..].iter().all(|b| *b == 0));
        // The writer has not come near the end: nothing more.
        p.extend().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT + AHEAD);
        // It began the segment AHEAD before the end: the zeros move on.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[9u8; 100], SEGMENT).unwrap();
        p.extend().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT + AHEAD + STEP);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[SEGMENT as usize..SEGMENT as usize + 100].iter().all(|b| *b == 9));
        // It wrote past the zeros: they start again after its bytes.
        let past = SEGMENT + AHEAD + STEP + 10;
        f.write_all_at(&[5u8; 10], past).unwrap();
        p.extend().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[past as usize..past as usize + 10].iter().all(|b| *b == 5), "its bytes are kept");
        assert_eq!(p.start, (past + 10).div_ceil(SEGMENT) * SEGMENT);
        assert_eq!(bytes.len() as u64, p.start + AHEAD);
    }
}
