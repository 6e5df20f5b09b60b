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
    /// The epoch of the leader that last took the shard; in-sync changes by any other leader
    /// are refused (a superseded leader cannot touch its successor's set).
    #[serde(default)]
    pub leader_epoch: i64,
    /// The node taking the shard over (a failover under way), until the new leader adopts it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub taken_by: String,
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
        let answer = timed("read shard", client.get(self.shard_key(shard), None)).await?;
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
        let key = self.shard_key(&record.shard);
        let unchanged = if record.revision == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, record.revision)
        };
        self.put_shard_record_when(record, vec![unchanged]).await
    }

    /// Fences `record`'s leader for a take-over by this node: writes `record` (its leader
    /// epoch cleared, `taken_by` set) only if the shard's record is unchanged, no process holds
    /// the shard's node id and none stands by to get it back — all in one etcd transaction. A
    /// check of those made earlier (a member list a moment old) can be stale: the shard's node
    /// may have joined since, and a take-over then would supersede a live, serving leader.
    pub async fn fence_if_gone(&self, record: &ShardRecord) -> Result<Option<ShardRecord>, ClusterError> {
        let conditions = vec![
            Compare::mod_revision(self.shard_key(&record.shard), CompareOp::Equal, record.revision),
            Compare::create_revision(self.node_key_of(&record.shard), CompareOp::Equal, 0),
            Compare::create_revision(self.standby_key(&record.shard), CompareOp::Equal, 0),
        ];
        self.put_shard_record_when(record, conditions).await
    }

    fn shard_key(&self, shard: &str) -> String {
        format!("{}{shard}", self.shards_prefix())
    }

    /// Writes `record` if every condition holds (one etcd transaction).
    async fn put_shard_record_when(
        &self,
        record: &ShardRecord,
        conditions: Vec<Compare>,
    ) -> Result<Option<ShardRecord>, ClusterError> {
        let value = serde_json::to_vec(record).map_err(|e| ClusterError::Config(e.to_string()))?;
        let txn = Txn::new().when(conditions).and_then([TxnOp::put(self.shard_key(&record.shard), value, None)]);
        let mut client = self.inner.client.clone();
        let answer = timed("write shard", client.txn(txn)).await?;
        if !answer.succeeded() {
            return Ok(None);
        }
        let revision = answer.header().map_or(0, |h| h.revision());
        Ok(Some(ShardRecord { revision, ..record.clone() }))
    }

    fn standby_key(&self, id: &str) -> String {
        format!("{}/standby/{id}", self.inner.settings.prefix)
    }

    /// Announces that this process, returning as node `id` while a copy serves that node's
    /// shard, waits for it to be handed back: a leased key (kept until `done` fires, then
    /// removed), so that no other node takes the shard over meanwhile.
    pub async fn stand_by(&self, id: &str, done: tokio_util::sync::CancellationToken) -> Result<(), ClusterError> {
        let mut client = self.inner.client.clone();
        let ttl = self.inner.settings.lease_ttl.as_secs().max(2) as i64;
        let lease = timed("lease grant", client.lease_grant(ttl, None)).await?.id();
        let options = etcd_client::PutOptions::new().with_lease(lease);
        timed("put standby", client.put(self.standby_key(id), self.node_id(), Some(options))).await?;
        let period = self.inner.settings.lease_ttl / 3;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                if let Ok((mut keeper, _)) = client.lease_keep_alive(lease).await {
                    let _ = keeper.keep_alive().await;
                }
            }
            let _ = timed("lease revoke", client.lease_revoke(lease)).await;
        });
        Ok(())
    }

    /// Whether a returning node waits for shard `id` to be handed back.
    pub async fn standing_by(&self, id: &str) -> Result<bool, ClusterError> {
        let mut client = self.inner.client.clone();
        Ok(!timed("read standby", client.get(self.standby_key(id), None)).await?.kvs().is_empty())
    }

    /// This process's epoch: the create revision of the membership key it created (0 before it
    /// joined). Not the current holder's: a replaced process keeps its own, older epoch.
    pub fn epoch(&self) -> i64 {
        self.inner.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }
}
