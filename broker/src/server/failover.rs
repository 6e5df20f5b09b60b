//! Failover (docs/replication.md): a node serves a dead node's shard from its in-sync copy, and
//! hands it back when that node returns.
//!
//! Every third of the lease TTL, each node with `--replicas` above 1 looks at the replica sets:
//! a shard whose node is not live, with no returning node standing by for it, is taken over by
//! the live, undrained node of its in-sync set whose copy is furthest ahead (or the node a
//! drained leader named when it handed the shard over), which starts a broker for that shard (its own
//! listener, in this process) over its copy. That broker joins as the shard's node id (a new,
//! higher epoch), so placements and forwarding are unchanged; it makes the replica set its own
//! (the serving node leaves the followers). When the shard's node returns and stands by, the
//! acting broker stops taking writes, the replica set names this node as in-sync follower with
//! the very store that served, and the acting broker stops (its lease revoked): the returning
//! node loads a copy of that store and claims its id again.

use super::{spawn_acting, RunningBroker};
use crate::cluster::{ClusterError, Membership};
use crate::config::Config;
use crate::replication::follower::Replicas;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// This node as a host of other nodes' shards.
pub struct Host {
    config: Config,
    membership: Membership,
    replicas: Arc<Replicas>,
    /// Where this node listens (the acting brokers listen on the same address, another port).
    local: SocketAddr,
    acting: tokio::sync::Mutex<HashMap<String, RunningBroker>>,
}

impl Host {
    pub fn new(config: Config, membership: Membership, replicas: Arc<Replicas>, local: SocketAddr) -> Self {
        Host { config, membership, replicas, local, acting: tokio::sync::Mutex::new(HashMap::new()) }
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.config.etcd_lease_ttl / 3).max(std::time::Duration::from_millis(300));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.round().await {
                tracing::debug!(error = %e, "failover round skipped");
            }
        }
        for (shard, running) in self.acting.lock().await.drain() {
            if let Err(e) = running.stop().await {
                tracing::warn!(shard, error = %e, "acting broker did not stop cleanly");
            }
        }
    }

    async fn round(&self) -> Result<(), ClusterError> {
        let me = self.membership.node_id().to_string();
        let live: HashSet<String> = self.membership.members().await?.into_iter().map(|m| m.record.id).collect();
        self.reap_ended().await;
        let acting: Vec<String> = self.acting.lock().await.keys().cloned().collect();
        for shard in &acting {
            if self.membership.standing_by(shard).await? {
                self.hand_back(shard).await?;
            }
        }
        let drained: HashSet<String> = self.membership.drained().await?.into_iter().collect();
        if drained.contains(&me) {
            // A drained node takes nothing over (it is about to stop serving).
            return Ok(());
        }
        let candidates: HashSet<String> = live.difference(&drained).cloned().collect();
        for r in self.membership.shard_records().await? {
            if r.shard == me || acting.contains(&r.shard) || live.contains(&r.shard) || !r.in_sync.contains(&me) {
                continue;
            }
            // Another live node is taking it over already.
            if !r.taken_by.is_empty() && r.taken_by != me && live.contains(&r.taken_by) {
                continue;
            }
            // The in-sync copy furthest ahead takes it (every in-sync copy holds every
            // acknowledged write; the furthest also keeps what was written but not yet
            // acknowledged); ties go to the first in the set. A node named to take it over
            // (by a drained leader handing it over, or by itself in an earlier round) does.
            if r.taken_by != me
                && self.furthest_copy(&r.shard, &r.in_sync, &candidates).await.as_deref() != Some(me.as_str())
            {
                continue;
            }
            // Fence the old leader first: from this write on, no in-sync change of its succeeds,
            // so it cannot acknowledge anything without this node's copy, which stops here.
            // The same write checks, in etcd, that the shard's node is still gone and that no
            // returning node stands by for it: the member list above may be a moment old.
            let mut fenced = r.clone();
            fenced.leader_epoch = 0;
            fenced.taken_by = me.clone();
            if self.membership.fence_if_gone(&fenced).await?.is_none() {
                continue;
            }
            self.take_over(&r.shard).await;
        }
        Ok(())
    }

    /// The live node of `in_sync` whose copy of `shard` stands furthest (epoch, then sequence);
    /// a node that cannot say (down, or a broker serving a shard from a copy) is passed over.
    async fn furthest_copy(&self, shard: &str, in_sync: &[String], live: &HashSet<String>) -> Option<String> {
        let me = self.membership.node_id();
        let mut best: Option<(crate::replication::Position, String)> = None;
        for node in in_sync.iter().filter(|n| live.contains(*n)) {
            let at =
                if node == me { self.replicas.position(shard).await.ok() } else { self.position_at(node, shard).await };
            let Some(at) = at else { continue };
            if best.as_ref().is_none_or(|(b, _)| (at.epoch, at.seq) > (b.epoch, b.seq)) {
                best = Some((at, node.clone()));
            }
        }
        best.map(|(_, n)| n)
    }

    async fn position_at(&self, node: &str, shard: &str) -> Option<crate::replication::Position> {
        let channel = self.membership.channel(node).await.ok()?;
        let mut client = txmq_proto::cluster::cluster_client::ClusterClient::new(channel);
        let mut req = tonic::Request::new(txmq_proto::cluster::CopyPositionRequest { shard: shard.to_string() });
        req.set_timeout(std::time::Duration::from_secs(2));
        crate::cluster::peer::mark_as_node(&self.membership, &mut req);
        let r = client.copy_position(req).await.ok()?.into_inner();
        Some(crate::replication::Position { epoch: r.epoch, seq: r.seq })
    }

    async fn take_over(&self, shard: &str) {
        let started = std::time::Instant::now();
        tracing::warn!(shard, "node is gone: serving its shard from this node's copy");
        self.replicas.release(shard).await;
        let mut c = self.config.clone();
        c.node_id = Some(shard.to_string());
        c.data_dir = self.replicas.path(shard);
        c.listen = SocketAddr::new(self.local.ip(), 0);
        // On this node's advertised host, at the port the acting broker binds.
        c.advertise = self.config.advertise.as_ref().and_then(|a| a.rsplit_once(':')).map(|(h, _)| format!("{h}:0"));
        c.metrics_listen = None;
        c.auth_init_user = None;
        match spawn_acting(c, self.membership.node_id().to_string()).await {
            Ok(running) => {
                tracing::info!(shard, at = %running.addr, took_ms = started.elapsed().as_millis() as u64, "acting broker started");
                self.acting.lock().await.insert(shard.to_string(), running);
            }
            Err(e) => {
                tracing::error!(shard, error = %e, "cannot serve the shard from this node's copy");
                self.replicas.resume(shard);
            }
        }
    }

    /// Forgets acting brokers that stopped by themselves — one that could not claim the shard's
    /// id (its node came back first) or was superseded — and follows their shards again, so
    /// that the shard's leader can feed this node's copy.
    async fn reap_ended(&self) {
        let ended: Vec<(String, RunningBroker)> = {
            let mut acting = self.acting.lock().await;
            let shards: Vec<String> = acting.iter().filter(|(_, b)| b.has_ended()).map(|(s, _)| s.clone()).collect();
            shards.into_iter().filter_map(|s| acting.remove(&s).map(|b| (s, b))).collect()
        };
        for (shard, running) in ended {
            match running.stop().await {
                Ok(()) => tracing::warn!(shard, "acting broker stopped by itself; following the shard again"),
                Err(e) => tracing::warn!(shard, error = %e, "acting broker ended; following the shard again"),
            }
            self.replicas.resume(&shard);
        }
    }

    /// Hands `shard` back to its returning node.
    async fn hand_back(&self, shard: &str) -> Result<(), ClusterError> {
        let Some(running) = self.acting.lock().await.remove(shard) else { return Ok(()) };
        let me = self.membership.node_id().to_string();
        let seq = match running.broker.leader() {
            Some(l) => l.quiesce().await,
            None => 0,
        };
        // This node follows again, with the store that served: in sync at `seq`. The others
        // catch up from the returning node and rejoin the set.
        loop {
            let Some(mut r) = self.membership.shard_record(shard).await? else { break };
            if !r.followers.contains(&me) {
                r.followers.push(me.clone());
            }
            r.in_sync = vec![me.clone()];
            if self.membership.put_shard_record_if(&r).await?.is_some() {
                break;
            }
        }
        if let Err(e) = running.stop().await {
            tracing::warn!(shard, error = %e, "acting broker did not stop cleanly");
        }
        self.replicas.resume(shard);
        tracing::info!(shard, seq, "shard handed back to its returning node");
        Ok(())
    }
}
