//! Replica sets in etcd (docs/replication.md): `<prefix>/shards/<shard>` names the shard's
//! followers and its in-sync set. A shard is one node's store; its leader is the node holding
//! the shard's id as membership key, whose create revision is the leader's epoch. The record is
//! created once (only if absent) and its in-sync set changed by compare-and-swap on the key's
//! revision, so a leader never acknowledges a write against an in-sync set etcd does not hold.

use super::{timed, ClusterError, Membership};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// A shard's replica set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard: String,
    /// Nodes holding copies, the leader excluded.
    pub followers: Vec<String>,
    /// Followers that hold every acknowledged write (the leader is always in sync).
    pub in_sync: Vec<String>,
    /// The key's modification revision when read.
    #[serde(skip)]
    pub revision: i64,
}

impl Membership {
    fn shards_prefix(&self) -> String {
        format!("{}/shards/", self.inner.settings.prefix)
    }

    /// The replica set of `shard`, if recorded.
    pub async fn shard_record(&self, shard: &str) -> Result<Option<ShardRecord>, ClusterError> {
        let mut client = self.inner.client.clone();
        let answer = timed("read shard", client.get(format!("{}{shard}", self.shards_prefix()), None)).await?;
        let Some(kv) = answer.kvs().first() else { return Ok(None) };
        let mut r: ShardRecord =
            serde_json::from_slice(kv.value()).map_err(|e| ClusterError::Etcd(format!("shard record {shard}: {e}")))?;
        r.revision = kv.mod_revision();
        Ok(Some(r))
    }

    /// Every shard's replica set.
    pub async fn shard_records(&self) -> Result<Vec<ShardRecord>, ClusterError> {
        let mut client = self.inner.client.clone();
        let answer =
            timed("list shards", client.get(self.shards_prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let mut out = Vec::new();
        for kv in answer.kvs() {
            match serde_json::from_slice::<ShardRecord>(kv.value()) {
                Ok(mut r) => {
                    r.revision = kv.mod_revision();
                    out.push(r);
                }
                Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "unreadable shard record in etcd"),
            }
        }
        Ok(out)
    }

    /// Writes `record` if the key is still at `record.revision` (0: absent); the record as
    /// etcd now holds it when that succeeded, `None` when someone wrote first.
    pub async fn put_shard_record_if(&self, record: &ShardRecord) -> Result<Option<ShardRecord>, ClusterError> {
        let key = format!("{}{}", self.shards_prefix(), record.shard);
        let unchanged = if record.revision == 0 {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, record.revision)
        };
        let value = serde_json::to_vec(record).map_err(|e| ClusterError::Config(e.to_string()))?;
        let txn = Txn::new().when([unchanged]).and_then([TxnOp::put(key, value, None)]);
        let mut client = self.inner.client.clone();
        let answer = timed("write shard", client.txn(txn)).await?;
        if !answer.succeeded() {
            return Ok(None);
        }
        let revision = answer.header().map_or(0, |h| h.revision());
        Ok(Some(ShardRecord { revision, ..record.clone() }))
    }

    /// This node's epoch: its membership key's create revision as last listed (0 before).
    pub fn epoch(&self) -> i64 {
        crate::sync::read(&self.inner.live).iter().find(|m| m.record.id == self.node_id()).map_or(0, |m| m.epoch)
    }
}
