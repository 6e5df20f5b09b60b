//! Preallocated segment files, shared by the value log and the journal: a file is written in
//! full with zeros and made durable when it is created, so that filling it later changes no
//! file-system metadata and an `fdatasync` of it commits no ext4 journal (docs/storage.md).

use super::StoreError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes a file written in the background is made durable by, a step at a time (see
/// [`write_zeros_in_steps`]). Measured on this project's 2-core host (ext4 on a virtual disk):
/// while a 64 MiB file was zeroed in 1 MiB steps, a concurrent 4 KiB overwrite + `fdatasync`
/// (a group commit) had a p99 of 0.95–1.6 ms; in 128 KiB steps 0.43–0.53 ms (0.2 ms with
/// nothing in the background); the file took 250 ms instead of 160.
pub const BACKGROUND_STEP: u64 = 128 << 10;

/// Bytes a big file is cut by per step when it is deleted ([`remove_in_steps`]).
pub const REMOVE_STEP: u64 = 4 << 20;

/// How much lower than the process the store's background thread runs ([`run_as_background`]).
const BACKGROUND_NICE: i32 = 10;

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

/// Deletes `file` (at `path`, with no other handle open to it) by cutting it from its end
/// [`REMOVE_STEP`] at a time, each cut synced, then unlinking what is left.
///
/// Why: unlinking a big file frees all its blocks in one commit of the file system's journal,
/// and on a file system mounted with online discard (`-o discard`, as this project's host is)
/// that commit trims them all while every other `fdatasync` waits. Deleting a 192 MiB file at
/// once held a concurrent 4 KiB `fdatasync` for up to 26–29 ms; in 4 MiB steps for at most
/// 1.4 ms, the deletion taking 58 ms instead of 40.
///
/// A crash part way leaves a shorter file at `path`: callers delete only files nothing reads
/// again and that an open removes (or name them so first).
pub fn remove_in_steps(file: File, path: &Path) -> std::io::Result<()> {
    let mut len = file.metadata()?.len();
    while len > REMOVE_STEP {
        len -= REMOVE_STEP;
        file.set_len(len)?;
        file.sync_all()?;
    }
    drop(file);
    std::fs::remove_file(path)
}

/// Deletes the file at `path`, held by `owner` (`file` takes it out): in steps
/// ([`remove_in_steps`]) when `owner` is its last holder, at once otherwise (a reader still
/// holds it; the blocks are freed at its last close, and cutting the file would cut what that
/// reader reads).
pub fn remove_owned<T>(owner: std::sync::Arc<T>, path: &Path, file: impl FnOnce(T) -> File) -> std::io::Result<()> {
    match std::sync::Arc::try_unwrap(owner) {
        Ok(owner) => remove_in_steps(file(owner), path),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Lowers the calling thread's CPU priority: its nice value (Linux keeps one per thread) goes up
/// by `BACKGROUND_NICE`, 10. For the store's background thread, whose work (zeroing the next journal
/// segment, merging runs, syncing a checkpoint's files) can wait, so that it takes a core only
/// when the group-commit writer and the request handlers leave one idle. On the 2-core host,
/// with the load generator beside the broker, a thread woken from `fdatasync` waited up to 5 ms
/// for a core; a burst of background work made the slowest paced runs.
pub fn run_as_background() {
    let me = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(me), (now + BACKGROUND_NICE).min(19)) {
        tracing::debug!(error = %e, "cannot lower the store's background thread's priority");
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A file of `len` bytes (sparse) ending in `tail`.
    fn file_ending_in(path: &Path, len: u64, tail: &[u8]) -> File {
        let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(tail, len - tail.len() as u64).unwrap();
        f
    }

    #[test]
    fn a_file_a_reader_still_holds_is_unlinked_whole_and_the_reader_reads_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        let len = 2 * REMOVE_STEP + 10;
        let file = Arc::new(file_ending_in(&path, len, b"last bytes"));
        let reader = file.clone();
        remove_owned(file, &path, |f| f).unwrap();
        assert!(!path.exists());
        let mut got = [0u8; 10];
        reader.read_exact_at(&mut got, len - 10).unwrap();
        assert_eq!(&got, b"last bytes", "cut under a reader");
        // The last holder: cut in steps, then gone.
        let path = dir.path().join("alone");
        let file = Arc::new(file_ending_in(&path, 3 * REMOVE_STEP + 5, b"x"));
        remove_owned(file, &path, |f| f).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn the_background_thread_runs_below_the_process_and_the_caller_stays_as_it_was() {
        let of = |tid| rustix::process::getpriority_process(Some(tid)).unwrap();
        let me = rustix::thread::gettid();
        let mine = of(me);
        let theirs = std::thread::spawn(move || {
            run_as_background();
            of(rustix::thread::gettid())
        })
        .join()
        .unwrap();
        assert_eq!(theirs, (mine + BACKGROUND_NICE).min(19));
        assert_eq!(of(me), mine, "only the calling thread");
    }
}
