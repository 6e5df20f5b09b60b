//! Preallocated segment files, shared by the value log and the journal: a file is written in
//! full with zeros and made durable when it is created, so that filling it later changes no
//! file-system metadata and an `fdatasync` of it commits no ext4 journal (docs/storage.md).

use super::StoreError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes a file written in the background is made durable by, a step at a time (see
/// [`write_zeros_in_steps`]).
pub const BACKGROUND_STEP: u64 = 1 << 20;

/// Makes the entries of directory `dir` (a file created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::Io(e.to_string()))
}

/// Writes a file of `size` zero bytes at `path` and makes it durable.
pub fn write_zeros(path: &Path, size: u64) -> std::io::Result<()> {
    write_zeros_in_steps(path, size, size)
}

/// Writes a file of `size` zero bytes at `path` a step at a time, each step made durable before
/// the next is written, and the whole file (its size too) with the last: for files made in the
/// background, so that a writer's `fdatasync` meanwhile never queues behind more than one step
/// of them.
pub fn write_zeros_in_steps(path: &Path, size: u64, step: u64) -> std::io::Result<()> {
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let mut at = 0;
    while at < size {
        let n = step.max(1).min(size - at);
        write_zeros_at(&f, at, n)?;
        at += n;
        if at < size {
            f.sync_data()?;
        }
    }
    f.sync_all()
}

/// Writes `n` zero bytes into `file` from `at`, in pieces of at most one page, each ending on
/// a page boundary.
///
/// Why pages: Linux caches a file in folios as large as the writes that made them (ext4, since
/// 6.x), and a later write of a few bytes dirties, and `fdatasync` writes back, its whole folio.
/// Zeros written a megabyte at a time made every group commit write a megabyte.
pub fn write_zeros_at(file: &File, at: u64, n: u64) -> std::io::Result<()> {
    const PAGE: u64 = 4096;
    let zeros = [0u8; PAGE as usize];
    let (mut at, stop) = (at, at + n);
    while at < stop {
        let len = (PAGE - at % PAGE).min(stop - at);
        file.write_all_at(&zeros[..len as usize], at)?;
        at += len;
    }
    Ok(())
}
