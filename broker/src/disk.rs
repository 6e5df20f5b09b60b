//! Free space on the data directory's filesystem, and the refusal of new messages while it is
//! under `--min-free-disk-bytes`.
//!
//! A write that finds the disk full fails its flush, and a failed flush makes the store refuse
//! every write until a restart (`store::committer`): acks, transaction decisions and offsets
//! too, so consumers could not even drain the backlog. Refusing new messages a margin before
//! the disk is full keeps the store writable: consumers go on acking, transactions are decided,
//! retention deletes, and sends are taken again as soon as space is back, without a restart.
//! The space is sampled by [`watch`] every [`SAMPLE_EVERY`]; the margin must cover what is
//! written between two samples.
//!
//! A node of a cluster with replicas also stops writing copies of other nodes' shards under the
//! floor (`replication::follower`): their writes come from their leaders, and would otherwise
//! take the margin this node keeps for its own store.

use crate::error::{BrokerError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often [`watch`] samples the free space.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// How every refusal's message begins.
pub const REFUSED: &str = "new messages refused";

/// How a replica's refusal to write copies begins.
pub const COPIES_REFUSED: &str = "copies refused";

/// No sample yet, or the last one failed: nothing is refused on a guess.
const UNKNOWN: u64 = u64::MAX;

/// The data directory's free space as last sampled, against the configured floor.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    /// New messages are refused while fewer bytes than this are free; 0 turns the check off.
    min_free: u64,
    free: AtomicU64,
}

impl DiskSpace {
    /// Watches the filesystem of `dir`; samples it once now.
    pub fn new(dir: &Path, min_free: u64) -> DiskSpace {
        let space = DiskSpace { dir: dir.to_path_buf(), min_free, free: AtomicU64::new(UNKNOWN) };
        space.sample();
        space
    }

    /// Reads the free space again (bytes available to the broker's user).
    pub fn sample(&self) {
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "cannot read the free disk space");
                None
            }
        };
        self.free.store(free.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    /// Free bytes at the last sample (`None`: not known).
    pub fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|f| *f != UNKNOWN)
    }

    /// Why new messages are refused now, if they are.
    pub fn refusal(&self) -> Option<String> {
        self.under_floor(REFUSED, "acks and transaction decisions are still taken")
    }

    /// Why this node refuses to write copies of other nodes' shards now, if it does: a copy's
    /// writes come from its leader, and would otherwise fill the disk past the floor until this
    /// node's own store fails its flush and refuses every write.
    pub fn copy_refusal(&self) -> Option<String> {
        self.under_floor(COPIES_REFUSED, "the copy goes on from where it stopped once space is back")
    }

    fn under_floor(&self, what: &str, then: &str) -> Option<String> {
        let free = self.free()?;
        (free < self.min_free).then(|| {
            format!(
                "{what}: {} free on the data directory's disk, under --min-free-disk-bytes ({}); {then}",
                mib(free),
                mib(self.min_free)
            )
        })
    }

    /// `Err` while new messages are refused.
    pub fn check(&self) -> Result<()> {
        match self.refusal() {
            Some(why) => Err(BrokerError::DiskLow(why)),
            None => Ok(()),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Samples `space` every [`SAMPLE_EVERY`] until `shutdown`, and logs when new messages start
/// and stop being refused.
pub async fn watch(space: std::sync::Arc<DiskSpace>, shutdown: CancellationToken) {
    // A broker started on a nearly full disk says so at once.
    let mut refused = match space.refusal() {
        Some(why) => {
            tracing::warn!("{why}");
            true
        }
        None => false,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        // statvfs is quick on a local disk, but may block on a network filesystem.
        let s = space.clone();
        if tokio::task::spawn_blocking(move || s.sample()).await.is_err() {
            return;
        }
        let now = space.refusal();
        match (refused, &now) {
            (false, Some(why)) => tracing::warn!("{why}"),
            (true, None) => {
                tracing::info!(free = space.free().unwrap_or(0), "disk space is back; new messages are taken again")
            }
            _ => {}
        }
        refused = now.is_some();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_below_the_floor_and_never_on_an_unknown_reading() {
        let dir = tempfile::tempdir().unwrap();
        let free = DiskSpace::new(dir.path(), 0).free().expect("a temporary directory's disk can be read");
        assert!(DiskSpace::new(dir.path(), 0).check().is_ok(), "0 turns the check off");
        assert!(DiskSpace::new(dir.path(), 1).check().is_ok());
        let over = DiskSpace::new(dir.path(), free.saturating_mul(2).max(1 << 40));
        let why = over.refusal().expect("a floor above the free space refuses");
        assert!(why.starts_with(REFUSED) && why.contains("--min-free-disk-bytes"), "{why}");
        assert!(matches!(over.check(), Err(BrokerError::DiskLow(_))));
        let copies = over.copy_refusal().expect("copies are refused under the floor too");
        assert!(copies.starts_with(COPIES_REFUSED) && copies.contains("--min-free-disk-bytes"), "{copies}");
        assert_eq!(DiskSpace::new(dir.path(), 1).copy_refusal(), None);
        let gone = DiskSpace::new(&dir.path().join("missing"), u64::MAX);
        assert_eq!(gone.free(), None);
        assert!(gone.check().is_ok(), "an unreadable disk is not taken for a full one");
    }
}
