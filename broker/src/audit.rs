//! The audit log: every operator action (a transaction committed, rolled back or resumed by
//! hand, dead letters resent) with who asked, when, why and how it ended. Stored durably in the
//! broker's store, newest kept, oldest dropped past [`KEEP`].

use crate::codec::{CodecError, Decoder, Encoder, Record};
use crate::error::Result;
use crate::model::Millis;
use crate::store::{scan_prefix, Batch, Committer, Key, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Entries kept; older ones are dropped by [`AuditLog::trim`].
pub const KEEP: usize = 10_000;

/// One operator action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Millis,
    /// Who: the authenticated user, and the actor the operator's tool named.
    pub actor: String,
    /// `commit`, `rollback`, `resume`, `resend-dead-letters`.
    pub action: String,
    /// What it acted on.
    pub target: String,
    pub reason: String,
    /// `ok`, or the error the action got.
    pub outcome: String,
}

impl Record for AuditEntry {
    const KIND: &'static str = "audit entry";
    const VERSION: u8 = 1;

    fn write(&self, e: &mut Encoder) {
        e.i64(self.at).str(&self.actor).str(&self.action).str(&self.target).str(&self.reason).str(&self.outcome);
    }

    fn read(d: &mut Decoder<'_>, _version: u8) -> std::result::Result<Self, CodecError> {
        Ok(AuditEntry {
            at: d.i64()?,
            actor: d.str()?,
            action: d.str()?,
            target: d.str()?,
            reason: d.str()?,
            outcome: d.str()?,
        })
    }
}

/// The stored audit log.
pub struct AuditLog {
    store: Arc<dyn Store>,
    committer: Arc<Committer>,
    /// Orders entries of one millisecond; seeded from the clock so a restart does not reuse a key.
    seq: AtomicU64,
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>, committer: Arc<Committer>) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self { store, committer, seq: AtomicU64::new(seed) }
    }

    /// Records `entry` durably.
    pub async fn record(&self, entry: &AuditEntry) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut batch = Batch::new();
        batch.put(&Key::Audit { at: entry.at, seq }, entry.encode());
        self.committer.commit(batch).await?;
        Ok(())
    }

    /// The newest `limit` entries, newest first. An entry that cannot be decoded is skipped
    /// (logged), never fatal.
    pub fn list(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let entries = scan_prefix(self.store.as_ref(), &Key::audit_prefix(), limit, true)?;
        Ok(entries
            .iter()
            .filter_map(|(_, value)| match AuditEntry::decode(value) {
                Ok(a) => Some(a),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping an unreadable audit entry");
                    None
                }
            })
            .collect())
    }

    /// Drops the entries older than the newest [`KEEP`]; returns how many.
    pub async fn trim(&self) -> Result<usize> {
        let all = scan_prefix(self.store.as_ref(), &Key::audit_prefix(), usize::MAX, true)?;
        if all.len() <= KEEP {
            return Ok(0);
        }
        let mut batch = Batch::new();
        for e in &all[KEEP..] {
            batch.delete_raw(e.0.clone());
        }
        let n = batch.len();
        self.committer.commit(batch).await?;
        Ok(n)
    }
}
