//! Topic placement: which nodes own a topic's queues, kept in etcd under
//! `<prefix>/topics/<topic>`.
//!
//! A topic's queues are split into shards, one per owning node; a shard is what clients see as
//! one broker name (the node id) with queue ids from 0. A placement is created once, by
//! whichever node first needs it, in one transaction that succeeds only if no placement exists
//! (so two nodes creating the same topic agree on one), and then never changes in this version
//! (moving queues is replication's job). Its epoch is the key's create revision. Each node keeps
//! the placements it read in memory: no etcd request per message.

use super::{timed, ClusterError, Membership};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One node's share of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub node: String,
    pub queues: u32,
}

/// Where a topic's queues live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub topic: String,
    /// The topic type's name (`MIXED`, `FIFO`, …).
    pub topic_type: String,
    pub shards: Vec<Shard>,
    /// The placement key's create revision.
    #[serde(skip)]
    pub epoch: i64,
}

impl Placement {
    /// Splits `queue_count` queues over `nodes` as evenly as possible (the first nodes get one
    /// more), skipping nodes that would get none.
    pub fn spread(topic: &str, topic_type: &str, queue_count: u32, nodes: &[String]) -> Placement {
        let n = nodes.len().max(1) as u32;
        let shards = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| Shard {
                node: node.clone(),
                queues: queue_count / n + u32::from((i as u32) < queue_count % n),
            })
            .filter(|s| s.queues > 0)
            .collect();
        Placement { topic: topic.into(), topic_type: topic_type.into(), shards, epoch: 0 }
    }

    /// The shard of `node`, if it owns one.
    pub fn shard(&self, node: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.node == node)
    }

    /// Queues over all shards.
    pub fn total_queues(&self) -> u32 {
        self.shards.iter().map(|s| s.queues).sum()
    }

    /// The shard whose queues hold global queue number `q` (shards in order, queues in order).
    pub fn shard_of(&self, mut q: u32) -> Option<&Shard> {
        for s in &self.shards {
            if q < s.queues {
                return Some(s);
            }
            q -= s.queues;
        }
        None
    }
}

impl Membership {
    /// Every placed topic, read from etcd.
    pub async fn placements(&self) -> Result<Vec<Placement>, ClusterError> {
        let mut client = self.inner.client.clone();
        let prefix = format!("{}/topics/", self.inner.settings.prefix);
        let answer =
            timed("list placements", client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))).await?;
        let mut out = Vec::new();
        for kv in answer.kvs() {
            match serde_json::from_slice::<Placement>(kv.value()) {
                Ok(mut p) => {
                    p.epoch = kv.create_revision();
                    out.push(p);
                }
                Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "unreadable placement in etcd"),
            }
        }
        Ok(out)
    }

    fn drained_prefix(&self) -> String {
        format!("{}/drained/", self.inner.settings.prefix)
    }

    /// Marks node `node` drained (no new queues go to it), or not.
    pub async fn set_drained(&self, node: &str, drained: bool) -> Result<(), ClusterError> {
        let mut client = self.inner.client.clone();
        let key = format!("{}{node}", self.drained_prefix());
        if drained {
            timed("drain node", client.put(key, "drained", None)).await?;
        } else {
            timed("undrain node", client.delete(key, None)).await?;
        }
        Ok(())
    }

    /// The drained nodes, read from etcd.
    pub async fn drained(&self) -> Result<Vec<String>, ClusterError> {
        let mut client = self.inner.client.clone();
        let prefix = self.drained_prefix();
        let answer =
            timed("list drained nodes", client.get(prefix.clone(), Some(etcd_client::GetOptions::new().with_prefix())))
                .await?;
        Ok(answer.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix).map(str::to_string)).collect())
    }

    /// The nodes new queues may go to: live and not drained, least loaded (fewest owned
    /// queues) first; all live nodes when every one is drained.
    pub async fn placement_candidates(&self) -> Result<Vec<String>, ClusterError> {
        let live: Vec<String> = self.members().await?.into_iter().map(|m| m.record.id).collect();
        let drained = self.drained().await?;
        let mut load: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        for p in self.placements().await? {
            for s in p.shards {
                *load.entry(s.node).or_default() += s.queues;
            }
        }
        let mut nodes: Vec<String> = live.iter().filter(|n| !drained.contains(n)).cloned().collect();
        if nodes.is_empty() {
            nodes = live;
        }
        nodes.sort_by_key(|n| (load.get(n).copied().unwrap_or(0), n.clone()));
        Ok(nodes)
    }

    /// Gives a placed topic `queue_count` queues in all: the added ones go one by one to the
    /// least-loaded live, undrained nodes (a node's shard grows, or it gets one). Changed with a
    /// compare-and-swap on the key's revision, so two operators scaling at once cannot lose one
    /// another's queues. Existing queues stay where they are.
    pub async fn scale_placement(&self, topic: &str, queue_count: u32) -> Result<Arc<Placement>, ClusterError> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let key = self.placement_key(topic);
        let mut client = self.inner.client.clone();
        for _ in 0..3 {
            let answer = timed("read placement", client.get(key.clone(), None)).await?;
            let kv =
                answer.kvs().first().ok_or_else(|| ClusterError::Config(format!("topic {topic} is not placed")))?;
            let mut p: Placement = serde_json::from_slice(kv.value())
                .map_err(|e| ClusterError::Etcd(format!("placement of {topic}: {e}")))?;
            let (revision, epoch) = (kv.mod_revision(), kv.create_revision());
            let total = p.total_queues();
            if queue_count <= total {
                return Err(ClusterError::Config(format!(
                    "topic {topic} has {total} queues; scaling only adds queues"
                )));
            }
            let nodes = self.placement_candidates().await?;
            let mut load: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
            for q in self.placements().await?.iter().flat_map(|p| p.shards.iter()) {
                *load.entry(q.node.clone()).or_default() += q.queues;
            }
            for _ in total..queue_count {
                let Some(node) = nodes.iter().min_by_key(|n| (load.get(*n).copied().unwrap_or(0), (*n).clone())) else {
                    return Err(ClusterError::Config("no live node to place queues on".into()));
                };
                *load.entry(node.clone()).or_default() += 1;
                match p.shards.iter_mut().find(|s| &s.node == node) {
                    Some(s) => s.queues += 1,
                    None => p.shards.push(Shard { node: node.clone(), queues: 1 }),
                }
            }
            let value = serde_json::to_vec(&p).map_err(|e| ClusterError::Config(e.to_string()))?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            if timed("scale placement", client.txn(txn)).await?.succeeded() {
                p.epoch = epoch;
                return Ok(self.remember(p));
            }
            // Changed meanwhile: read it again and add to what is there now.
        }
        Err(ClusterError::Etcd(format!("placement of {topic} kept changing; try again")))
    }

    /// Re-reads every placement into the cache (placements grow when a topic is scaled).
    pub async fn refresh_placements(&self) -> Result<(), ClusterError> {
        for p in self.placements().await? {
            self.remember(p);
        }
        Ok(())
    }

    fn placement_key(&self, topic: &str) -> String {
        format!("{}/topics/{topic}", self.inner.settings.prefix)
    }

    /// The placement of `topic`, from memory or etcd; `None` if the topic has none.
    pub async fn placement(&self, topic: &str) -> Result<Option<Arc<Placement>>, ClusterError> {
        if let Some(p) = crate::sync::read(&self.inner.placements).get(topic) {
            return Ok(Some(p.clone()));
        }
        let mut client = self.inner.client.clone();
        let answer = timed("read placement", client.get(self.placement_key(topic), None)).await?;
        let Some(kv) = answer.kvs().first() else { return Ok(None) };
        let mut p: Placement =
            serde_json::from_slice(kv.value()).map_err(|e| ClusterError::Etcd(format!("placement of {topic}: {e}")))?;
        p.epoch = kv.create_revision();
        Ok(Some(self.remember(p)))
    }

    fn remember(&self, p: Placement) -> Arc<Placement> {
        let p = Arc::new(p);
        crate::sync::write(&self.inner.placements).insert(p.topic.clone(), p.clone());
        p
    }

    /// Stores `proposed` as the topic's placement unless it has one; returns the one that holds
    /// (ours, or the one another node stored first) and whether ours was stored.
    pub async fn create_placement(&self, proposed: Placement) -> Result<(Arc<Placement>, bool), ClusterError> {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let key = self.placement_key(&proposed.topic);
        let value = serde_json::to_vec(&proposed).map_err(|e| ClusterError::Config(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None), TxnOp::get(key.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut client = self.inner.client.clone();
        let answer = timed("create placement", client.txn(txn)).await?;
        let created = answer.succeeded();
        let kv = answer
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .ok_or_else(|| ClusterError::Etcd(format!("placement of {} vanished", proposed.topic)))?;
        let mut p: Placement = serde_json::from_slice(kv.value())
            .map_err(|e| ClusterError::Etcd(format!("placement of {}: {e}", proposed.topic)))?;
        p.epoch = kv.create_revision();
        Ok((self.remember(p), created))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_spread_evenly_and_map_back_to_their_shard() {
        let nodes: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let p = Placement::spread("t", "MIXED", 8, &nodes);
        let counts: Vec<u32> = p.shards.iter().map(|s| s.queues).collect();
        assert_eq!(counts, [3, 3, 2]);
        assert_eq!(p.total_queues(), 8);
        assert_eq!(p.shard_of(2).unwrap().node, "n1");
        assert_eq!(p.shard_of(3).unwrap().node, "n2");
        assert_eq!(p.shard_of(7).unwrap().node, "n3");
        assert!(p.shard_of(8).is_none());
        let p = Placement::spread("t", "MIXED", 2, &nodes);
        assert_eq!(p.shards.len(), 2, "a node with no queue has no shard");
    }
}
