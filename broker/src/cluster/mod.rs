//! Cluster membership over etcd, the control plane (docs/cluster.md).
//!
//! A node joins by holding a key `<prefix>/nodes/<node id>` under an etcd lease of its own: it
//! grants the lease, then creates the key only if no one holds it (one transaction), so a second
//! process with the same node id is refused while the first one lives. The key's value says
//! where clients and peers reach the node. A background task renews the lease every third of
//! its time to live; a node that stops renewing it (killed, stopped, cut off from etcd) leaves
//! the member list when the lease expires, and a node that finds its lease gone joins again.
//!
//! Every etcd call has a deadline ([`ETCD_TIMEOUT`]); a failed call is an error to the caller,
//! never a guess. Nothing per message goes to etcd.
//!
//! Owns: this node's membership key and lease, and the etcd client. Never touches the store;
//! the data directory's node id stamp is the broker's (`Broker::claim_node_id`).

pub mod peer;
pub mod placement;
pub mod producers;
pub mod shards;
pub mod users;

pub use placement::{Placement, Shard};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest wait for any one etcd call.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the cluster refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("node id {id} is held by a live node (at {address}); stop it, or pick another --node-id")]
    NodeIdTaken { id: String, address: String },
    #[error("{0}")]
    Config(String),
}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> Self {
        ClusterError::Etcd(e.to_string())
    }
}

/// How this node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub endpoints: Vec<String>,
    pub node_id: String,
    /// `host:port` clients and peers dial.
    pub address: String,
    /// Key prefix of the cluster, without a trailing '/'.
    pub prefix: String,
    pub lease_ttl: Duration,
    /// How requests to peers are made secure.
    pub peer: peer::PeerSettings,
    /// For a shard served from a copy after a failover: the node serving it.
    pub acting_on: Option<String>,
}

/// What a node publishes about itself under its membership key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub address: String,
    /// When this membership began (ms since the epoch).
    pub joined_at_ms: i64,
    pub version: String,
    /// Set when this is a shard served from a copy by another node (failover): that node's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_on: Option<String>,
}

/// A live member as etcd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub record: NodeRecord,
    /// The membership key's create revision: a new one each time the node (re)joins.
    pub epoch: i64,
    pub lease: i64,
}

/// Splits `--etcd` into endpoint URLs.
pub fn endpoints(list: &str) -> Result<Vec<String>, String> {
    let v: Vec<String> = list.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    if v.is_empty() {
        return Err("--etcd names no endpoint".into());
    }
    if let Some(bad) = v.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
        return Err(format!("etcd endpoint {bad:?} must be a URL (http://host:port)"));
    }
    Ok(v)
}

/// A node id: 1 to 64 letters, digits, '_' or '-'.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("node id {id:?} must be 1 to 64 letters, digits, '_' or '-'"));
    }
    Ok(())
}

/// Runs one etcd call with the deadline.
async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(ETCD_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| ClusterError::Etcd(format!("{what}: {e}"))),
        Err(_) => Err(ClusterError::Etcd(format!("{what}: no answer within {ETCD_TIMEOUT:?}"))),
    }
}

/// This node's membership. Cheap to clone.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClusterSettings,
    client: etcd_client::Client,
    record: NodeRecord,
    lease: AtomicI64,
    /// This process's epoch: the create revision of the membership key it created.
    epoch: AtomicI64,
    /// The lease was renewed within its time to live.
    healthy: AtomicBool,
    /// When the lease was last granted or renewed.
    renewed: std::sync::Mutex<tokio::time::Instant>,
    /// The live members as last listed (refreshed with every renewal).
    live: std::sync::RwLock<Vec<Member>>,
    /// Topic placements read or created so far (they never change once made).
    placements: std::sync::RwLock<std::collections::HashMap<String, Arc<Placement>>>,
    /// This node's producers as last published (see `producers`).
    published: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Every node's producers as last read.
    producers: std::sync::RwLock<producers::ProducerMap>,
    /// Channels to peers.
    channels: peer::Channels,
    /// Live nodes a call failed to reach (see [`Membership::mark_unreachable`]).
    unreachable: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Fired when another process holds this node id now (this one was replaced).
    superseded: CancellationToken,
}

impl Membership {
    fn nodes_prefix(prefix: &str) -> String {
        format!("{prefix}/nodes/")
    }

    fn node_key(&self) -> String {
        self.node_key_of(&self.inner.settings.node_id)
    }

    /// The membership key of node `id` (present while a process holds that id).
    fn node_key_of(&self, id: &str) -> String {
        format!("{}{id}", Self::nodes_prefix(&self.inner.settings.prefix))
    }

    /// Connects to etcd and joins: refused when a live node holds the same node id.
    pub async fn join(settings: ClusterSettings, now_ms: i64) -> Result<Self, ClusterError> {
        let m = Self::connect(settings, now_ms).await?;
        // A node restarted right after it died finds its old key until the old lease expires:
        // it waits that long before it refuses (a live holder renews and keeps the key).
        let deadline = tokio::time::Instant::now() + m.inner.settings.lease_ttl + Duration::from_secs(1);
        loop {
            match m.claim().await {
                Err(ClusterError::NodeIdTaken { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => break other?,
            }
        }
        m.refresh_live().await?;
        Ok(m)
    }

    /// Connects to etcd without joining (to look around before joining).
    pub async fn connect(settings: ClusterSettings, now_ms: i64) -> Result<Self, ClusterError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_timeout(ETCD_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), ETCD_TIMEOUT);
        let client = timed("connect", etcd_client::Client::connect(&settings.endpoints, Some(options))).await?;
        let record = NodeRecord {
            id: settings.node_id.clone(),
            address: settings.address.clone(),
            joined_at_ms: now_ms,
            version: env!("CARGO_PKG_VERSION").to_string(),
            acting_on: settings.acting_on.clone(),
        };
        let m = Membership {
            inner: Arc::new(Inner {
                settings,
                client,
                record,
                lease: AtomicI64::new(0),
                epoch: AtomicI64::new(0),
                healthy: AtomicBool::new(false),
                renewed: std::sync::Mutex::new(tokio::time::Instant::now()),
                live: std::sync::RwLock::new(Vec::new()),
                placements: std::sync::RwLock::new(std::collections::HashMap::new()),
                published: std::sync::Mutex::new(std::collections::BTreeSet::new()),
                producers: std::sync::RwLock::new(producers::ProducerMap::new()),
                channels: peer::Channels::default(),
                unreachable: std::sync::Mutex::new(std::collections::HashSet::new()),
                superseded: CancellationToken::new(),
            }),
        };
        Ok(m)
    }

    /// Grants a lease and creates the membership key under it, if no one holds the key.
    async fn claim(&self) -> Result<(), ClusterError> {
        use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
        let mut client = self.inner.client.clone();
        let ttl = self.inner.settings.lease_ttl.as_secs().max(2) as i64;
        let lease = timed("lease grant", client.lease_grant(ttl, None)).await?.id();
        let key = self.node_key();
        let value = serde_json::to_vec(&self.inner.record).map_err(|e| ClusterError::Config(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = timed("join", client.txn(txn)).await?;
        if !answer.succeeded() {
            // Give the lease back: it holds nothing.
            let _ = timed("lease revoke", client.lease_revoke(lease)).await;
            let held = answer.op_responses().into_iter().find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.lease(), kv.value().to_vec())),
                _ => None,
            });
            if let Some((holder, _)) = &held {
                if *holder == self.inner.lease.load(Ordering::SeqCst) {
                    // Still ours: the old lease lives (renewals failed on the way, not in etcd).
                    self.mark_renewed();
                    return Ok(());
                }
            }
            let address = held
                .and_then(|(_, v)| serde_json::from_slice::<NodeRecord>(&v).ok())
                .map_or_else(|| "an unknown address".to_string(), |r| r.address);
            return Err(ClusterError::NodeIdTaken { id: self.inner.settings.node_id.clone(), address });
        }
        self.inner.lease.store(lease, Ordering::SeqCst);
        if let Some(h) = answer.header() {
            // The key was created by this transaction: its create revision is the revision.
            self.inner.epoch.store(h.revision(), Ordering::SeqCst);
        }
        // Entries published under an earlier lease went with it: publish them again.
        crate::sync::lock(&self.inner.published).clear();
        self.mark_renewed();
        tracing::info!(node_id = self.inner.settings.node_id, lease, "joined the cluster");
        Ok(())
    }

    /// Renews the lease until `shutdown`, then gives it back (the node leaves at once). A lease
    /// found expired is claimed again (a new epoch); failures are logged and retried.
    pub async fn keep_alive(self, shutdown: CancellationToken) {
        let period = self.inner.settings.lease_ttl / 3;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.refresh_live().await {
                tracing::debug!(error = %e, "member list not refreshed");
            }
            if let Err(e) = self.refresh_placements().await {
                tracing::debug!(error = %e, "placements not refreshed");
            }
            if let Err(e) = self.renew_once().await {
                if self.inner.healthy.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "cluster lease not renewed; retrying");
                }
                // Unrenewed for a whole time to live, the lease is gone (or soon is): claim
                // the membership again, which succeeds once etcd has dropped the old key.
                if self.since_renewed() > self.inner.settings.lease_ttl {
                    match self.claim().await {
                        Err(ClusterError::NodeIdTaken { address, .. }) => {
                            tracing::error!(holder = address, "another process holds this node id now: stepping down");
                            self.supersede();
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "cluster membership not claimed yet"),
                        Ok(()) => {}
                    }
                }
            }
        }
        let lease = self.inner.lease.load(Ordering::SeqCst);
        let mut client = self.inner.client.clone();
        match timed("lease revoke", client.lease_revoke(lease)).await {
            Ok(_) => tracing::info!("left the cluster"),
            Err(e) => tracing::warn!(error = %e, "could not leave the cluster; the lease will expire"),
        }
    }

    async fn renew_once(&self) -> Result<(), ClusterError> {
        let lease = self.inner.lease.load(Ordering::SeqCst);
        let mut client = self.inner.client.clone();
        let (mut keeper, mut stream) = timed("lease keep-alive", client.lease_keep_alive(lease)).await?;
        timed("lease keep-alive", keeper.keep_alive()).await?;
        let answer = timed("lease keep-alive", stream.message()).await?;
        match answer {
            Some(r) if r.ttl() > 0 => {
                if !self.inner.healthy.load(Ordering::SeqCst) {
                    tracing::info!("cluster lease renewed again");
                }
                self.mark_renewed();
                Ok(())
            }
            _ => {
                tracing::warn!(lease, "cluster lease expired; joining again");
                self.inner.healthy.store(false, Ordering::SeqCst);
                self.claim().await
            }
        }
    }

    fn mark_renewed(&self) {
        *crate::sync::lock(&self.inner.renewed) = tokio::time::Instant::now();
        self.inner.healthy.store(true, Ordering::SeqCst);
    }

    fn since_renewed(&self) -> Duration {
        crate::sync::lock(&self.inner.renewed).elapsed()
    }

    /// The time-to-live of this node's lease.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.settings.lease_ttl
    }

    /// The ids of live nodes running as themselves (not brokers serving another node's shard
    /// from a copy), read from etcd.
    pub async fn live_hosts(&self) -> Result<std::collections::HashSet<String>, ClusterError> {
        Ok(self.members().await?.into_iter().filter(|m| m.record.acting_on.is_none()).map(|m| m.record.id).collect())
    }

    /// For a shard served from a copy: the node serving it.
    pub fn acting_on(&self) -> Option<&str> {
        self.inner.settings.acting_on.as_deref()
    }

    /// Marks this node as replaced: whoever watches [`Self::superseded`] stops serving.
    pub fn supersede(&self) {
        self.inner.superseded.cancel();
    }

    /// Fired once this node is replaced by another holder of its id.
    pub fn superseded(&self) -> CancellationToken {
        self.inner.superseded.clone()
    }

    /// The record of the node holding id `id`, if any (read from etcd).
    pub async fn holder(&self, id: &str) -> Result<Option<NodeRecord>, ClusterError> {
        let mut client = self.inner.client.clone();
        let answer = timed("read node", client.get(self.node_key_of(id), None)).await?;
        Ok(answer.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// Whether the lease was renewed within its time to live.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::SeqCst)
    }

    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// How this node's requests to peers are secured (their signing key, TLS).
    pub fn peer_settings(&self) -> &peer::PeerSettings {
        &self.inner.settings.peer
    }

    /// A channel to live node `node` (one per address, shared by every request). A node missing
    /// from the cached member list (it joined since the last listing) is looked up in etcd.
    pub async fn channel(&self, node: &str) -> Result<tonic::transport::Channel, ClusterError> {
        let address = match self.address_of(node) {
            Some(a) => a,
            None => {
                self.members().await?;
                self.address_of(node).ok_or_else(|| ClusterError::Config(format!("node {node} is not live")))?
            }
        };
        self.inner.channels.get(&self.inner.settings.peer, node, &address)
    }

    /// Re-reads the member list into the cache [`Self::live`] answers from.
    async fn refresh_live(&self) -> Result<(), ClusterError> {
        self.members().await.map(drop)
    }

    /// The live members as last listed (at most a third of the lease TTL old): no etcd request.
    pub fn live(&self) -> Vec<Member> {
        crate::sync::read(&self.inner.live).clone()
    }

    /// Whether node `id` was live at the last listing.
    pub fn is_live(&self, id: &str) -> bool {
        crate::sync::read(&self.inner.live).iter().any(|m| m.record.id == id)
    }

    /// Whether node `id` was live at the last listing and has not failed a call since
    /// ([`Self::mark_unreachable`]).
    pub fn is_reachable(&self, id: &str) -> bool {
        self.is_live(id) && !crate::sync::lock(&self.inner.unreachable).contains(id)
    }

    /// Leaves node `id` out of the nodes requests are passed to, after a call to it failed at
    /// the transport (refused, reset, a ping unanswered), until it answers a probe or leaves
    /// the member list. A node that is gone or frozen stays listed until its lease expires;
    /// without this, every request passed to it in that time would wait to fail.
    pub fn mark_unreachable(&self, id: &str) {
        if id == self.node_id() || !crate::sync::lock(&self.inner.unreachable).insert(id.to_string()) {
            return;
        }
        tracing::info!(node = id, "peer not answering; left out until it answers a probe");
        // The probe holds the membership only while it probes: it ends with the node.
        let weak = Arc::downgrade(&self.inner);
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(peer::PROBE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                let m = Membership { inner };
                let back = !m.is_live(&id)
                    || match m.channel(&id).await {
                        Ok(c) => peer::answers(&c).await,
                        Err(_) => false,
                    };
                if back {
                    crate::sync::lock(&m.inner.unreachable).remove(&id);
                    tracing::info!(node = id, "peer answers again");
                    return;
                }
            }
        });
    }

    /// The address of live node `id`.
    pub fn address_of(&self, id: &str) -> Option<String> {
        crate::sync::read(&self.inner.live).iter().find(|m| m.record.id == id).map(|m| m.record.address.clone())
    }

    /// The live members, by node id, read from etcd (and kept as the cache [`Self::live`]
    /// answers from).
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let mut client = self.inner.client.clone();
        let prefix = Self::nodes_prefix(&self.inner.settings.prefix);
        let answer =
            timed("list nodes", client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))).await?;
        let mut members = Vec::new();
        for kv in answer.kvs() {
            match serde_json::from_slice::<NodeRecord>(kv.value()) {
                Ok(record) => members.push(Member { record, epoch: kv.create_revision(), lease: kv.lease() }),
                Err(e) => tracing::warn!(key = ?kv.key_str(), error = %e, "unreadable node record in etcd"),
            }
        }
        members.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        *crate::sync::write(&self.inner.live) = members.clone();
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_node_ids_are_checked() {
        assert_eq!(endpoints("http://a:1, http://b:2").unwrap(), ["http://a:1", "http://b:2"]);
        assert!(endpoints("").is_err());
        assert!(endpoints("a:1").is_err());
        assert!(validate_node_id("n-1_a").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("n/1").is_err());
        assert!(validate_node_id(&"n".repeat(65)).is_err());
    }

    #[test]
    fn node_records_round_trip_as_json() {
        let r = NodeRecord {
            id: "n1".into(),
            address: "127.0.0.1:8081".into(),
            joined_at_ms: 5,
            version: "0.1.0".into(),
            acting_on: None,
        };
        let v = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<NodeRecord>(&v).unwrap(), r);
    }
}
