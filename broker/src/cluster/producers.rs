//! Which node holds a Telemetry stream of which producer, so that the owner of a half message
//! can have its check-back pushed to a producer connected elsewhere.
//!
//! Each node publishes `<prefix>/producers/<topic>/<client id>` → its node id for the producers
//! whose streams it holds, under its own lease (so the entries vanish with the node), and
//! writes only what changed since its last publication: etcd sees a write when a producer
//! connects or leaves, never per message. Each node also keeps the whole registry in memory,
//! re-read at every check round.

use super::{timed, ClusterError, Membership};
use std::collections::{BTreeSet, HashMap};

/// Producers known to the cluster: topic → `(client id, node id)`.
pub type ProducerMap = HashMap<String, Vec<(String, String)>>;

impl Membership {
    fn producers_prefix(&self) -> String {
        format!("{}/producers/", self.inner.settings.prefix)
    }

    /// Publishes this node's producers (`(topic, client id)`), writing only the difference
    /// from the last publication.
    pub async fn publish_producers(&self, now: &BTreeSet<(String, String)>) -> Result<(), ClusterError> {
        let before = crate::sync::lock(&self.inner.published).clone();
        if &before == now {
            return Ok(());
        }
        let mut client = self.inner.client.clone();
        let lease = self.inner.lease.load(std::sync::atomic::Ordering::SeqCst);
        let key = |(topic, client): &(String, String)| format!("{}{topic}/{client}", self.producers_prefix());
        for gone in before.difference(now) {
            timed("unpublish producer", client.delete(key(gone), None)).await?;
        }
        let options = etcd_client::PutOptions::new().with_lease(lease);
        for new in now.difference(&before) {
            timed("publish producer", client.put(key(new), self.node_id(), Some(options.clone()))).await?;
        }
        *crate::sync::lock(&self.inner.published) = now.clone();
        Ok(())
    }

    /// Re-reads every node's producers into the cache [`Self::producer_nodes`] answers from.
    pub async fn refresh_producers(&self) -> Result<(), ClusterError> {
        let mut client = self.inner.client.clone();
        let prefix = self.producers_prefix();
        let answer =
            timed("list producers", client.get(prefix.clone(), Some(etcd_client::GetOptions::new().with_prefix())))
                .await?;
        let mut map = ProducerMap::new();
        for kv in answer.kvs() {
            let (Ok(key), Ok(node)) = (kv.key_str(), kv.value_str()) else { continue };
            let Some((topic, client)) = key.strip_prefix(&prefix).and_then(|rest| rest.rsplit_once('/')) else {
                continue;
            };
            map.entry(topic.to_string()).or_default().push((client.to_string(), node.to_string()));
        }
        *crate::sync::write(&self.inner.producers) = map;
        Ok(())
    }

    /// Producers of `topic` connected to other live nodes (not left out for a failed call), as
    /// last read: `(client, node)`, the originator's first.
    pub fn producer_nodes(&self, topic: &str, originator: &str) -> Vec<(String, String)> {
        let map = crate::sync::read(&self.inner.producers);
        let mut v: Vec<(String, String)> = map
            .get(topic)
            .into_iter()
            .flatten()
            .filter(|(_, node)| node != self.node_id() && self.is_reachable(node))
            .cloned()
            .collect();
        v.sort_by_key(|(client, _)| client != originator);
        v
    }
}
