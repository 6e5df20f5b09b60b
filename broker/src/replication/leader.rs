//! The leader side: numbers each group commit, keeps recent batches, streams them to every
//! follower (one task per follower), and decides when a group is acknowledged.
//!
//! A group is acknowledged once every in-sync follower has fsynced it. A follower that has not
//! within `ack_timeout`, or whose stream broke (it died, or froze and failed the channel's
//! ping), is dropped from the in-sync set: in etcd first (compare-and-swap), so
//! the set etcd holds always contains every copy that has every acknowledged write; then the
//! group is acknowledged if at least `min_insync` copies (the leader's included) remain, and
//! otherwise stays unacknowledged (the committer retries; new writes are refused). A follower
//! that has caught up with the leader's latest sequence joins the set again, in etcd first.
//!
//! The leader also keeps the shard on `replicas` copies (a follower on a drained node, or gone
//! for `replace_after`, is replaced by a live node holding no copy, and leaves the set once the
//! replacement is in sync), and on a drained node hands the shard to an in-sync copy.

use super::{History, Position, Settings};
use crate::cluster::shards::ShardRecord;
use crate::cluster::Membership;
use crate::store::{Batch, Replicator, Store};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use txmq_proto::cluster::cluster_client::ClusterClient;
use txmq_proto::cluster::{replicate_request::Item, Append, Hello, ReplicateRequest, SnapshotChunk};

/// One follower as the leader sees it.
#[derive(Debug, Clone, Default)]
pub struct FollowerState {
    /// Highest sequence it acknowledged as durable.
    pub acked: u64,
    pub in_sync: bool,
    /// Joining the in-sync set: every group after this sequence waits for it; it joins (in
    /// etcd) once it has acknowledged this sequence, so it then holds every acknowledged write.
    pub joining_from: Option<u64>,
    pub stream: Stream,
    /// Snapshots sent to it since this leader started.
    pub snapshots: u64,
    /// Why its stream last broke (empty once one is open again).
    pub error: String,
}

/// The leader's stream to one follower.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stream {
    /// Not open yet since this leader started: a write waits for the follower, up to the
    /// acknowledgement timeout, as it connects.
    #[default]
    NotYet,
    Open,
    /// It broke and is not open again: a write does not wait for the follower, which cannot
    /// acknowledge before it reconnects.
    Broken,
}

/// Why the replica set is not this leader's to change.
enum NotOwn {
    /// Another leader holds it, or a takeover began.
    Lost(String),
    /// It could not be read or written (etcd).
    Unread(String),
}

impl From<NotOwn> for String {
    fn from(e: NotOwn) -> String {
        match e {
            NotOwn::Lost(e) | NotOwn::Unread(e) => e,
        }
    }
}

struct State {
    /// Last sequence given to a group.
    seq: u64,
    /// Recent batches, oldest first.
    log: VecDeque<(u64, Arc<Vec<u8>>)>,
    log_bytes: usize,
    /// Snapshots under way need the log from these sequences on.
    pins: Vec<u64>,
    followers: BTreeMap<String, FollowerState>,
    /// The replica set as etcd holds it (`None` until read or created).
    record: Option<ShardRecord>,
    /// The shard's epochs and their first sequences.
    history: History,
    /// A group is between `prepare` and its acknowledgement.
    in_progress: bool,
    /// The highest sequence acknowledged to writers.
    acknowledged: u64,
    /// Handing the shard back: no new writes.
    handing_back: bool,
}

/// A shard's leader.
pub struct Leader {
    shard: String,
    settings: Settings,
    store: Arc<dyn Store>,
    membership: Membership,
    rt: tokio::runtime::Handle,
    state: Mutex<State>,
    acked: Condvar,
    /// The latest sequence in the log (link tasks wait on it).
    latest: watch::Sender<u64>,
    /// Each follower's stream task, stopped when it leaves the replica set.
    links: Mutex<HashMap<String, CancellationToken>>,
    /// Since when each follower has been missing from the live nodes.
    missing: Mutex<HashMap<String, Instant>>,
}

/// What `cluster status` shows of a shard this node leads.
#[derive(Debug, Clone)]
pub struct LeaderStatus {
    pub shard: String,
    pub epoch: i64,
    pub seq: u64,
    pub followers: BTreeMap<String, FollowerState>,
}

impl Leader {
    /// The leader of this node's own shard over `store`, continuing from the position it holds.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        membership: Membership,
    ) -> Result<Arc<Leader>, crate::store::StoreError> {
        let at = Position::read(store.as_ref())?;
        let history = History::read(store.as_ref())?;
        let (latest, _) = watch::channel(at.seq);
        Ok(Arc::new(Leader {
            shard: membership.node_id().to_string(),
            settings,
            store,
            membership,
            rt: tokio::runtime::Handle::current(),
            state: Mutex::new(State {
                seq: at.seq,
                log: VecDeque::new(),
                log_bytes: 0,
                pins: Vec::new(),
                followers: BTreeMap::new(),
                record: None,
                history,
                in_progress: false,
                acknowledged: at.seq,
                handing_back: false,
            }),
            acked: Condvar::new(),
            latest,
            links: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
        }))
    }

    pub fn status(&self) -> LeaderStatus {
        let st = crate::sync::lock(&self.state);
        LeaderStatus {
            shard: self.shard.clone(),
            epoch: self.membership.epoch(),
            seq: st.seq,
            followers: st.followers.clone(),
        }
    }

    /// Finds (or, once enough nodes are live, creates) the shard's replica set in etcd, then
    /// keeps a stream open to each follower until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let record = loop {
            match self.replica_set().await {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "replica set not read yet"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        let record = loop {
            match self.adopt(record.clone()).await {
                Ok(r) => break r,
                Err(e) => tracing::warn!(error = %e, "replica set not taken over yet"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        };
        tracing::info!(shard = self.shard, epoch = record.leader_epoch, followers = ?record.followers, in_sync = ?record.in_sync, "replicating");
        {
            let mut st = crate::sync::lock(&self.state);
            for f in &record.followers {
                let in_sync = record.in_sync.contains(f);
                st.followers.insert(f.clone(), FollowerState { in_sync, ..Default::default() });
            }
            st.record = Some(record.clone());
        }
        self.acked.notify_all();
        let tasks = TaskTracker::new();
        for f in record.followers {
            self.start_link(&tasks, f, &shutdown);
        }
        let period = (self.membership.lease_ttl() / 3).max(Duration::from_millis(500));
        let mut warned = String::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
            // Which nodes run as themselves, and which are drained: read once for both.
            let hosts = self.membership.live_hosts().await;
            let drained = self.membership.drained().await;
            let (Ok(hosts), Ok(drained)) = (hosts, drained) else {
                tracing::debug!(shard = self.shard, "live and drained nodes not read from etcd");
                continue;
            };
            let drained: HashSet<String> = drained.into_iter().collect();
            if let Err(e) = self.reconcile(&tasks, &shutdown, &hosts, &drained).await {
                tracing::debug!(shard = self.shard, error = %e, "replica set not reconciled");
            }
            if self.membership.acting_on().is_none() && drained.contains(&self.shard) {
                match self.step_down(&hosts, &drained).await {
                    Err(e) if e != warned => {
                        tracing::warn!(shard = self.shard, error = %e, "drained, but the shard cannot move yet");
                        warned = e;
                    }
                    _ => {}
                }
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    fn start_link(self: &Arc<Self>, tasks: &TaskTracker, node: String, shutdown: &CancellationToken) {
        let stop = shutdown.child_token();
        crate::sync::lock(&self.links).insert(node.clone(), stop.clone());
        let me = self.clone();
        tasks.spawn(async move { me.link(node, stop).await });
    }

    /// Keeps the shard on `replicas` copies. A follower on a drained node, or missing from the
    /// live nodes for `replace_after`, gets a replacement: a live, undrained node without a copy
    /// (the least loaded), which receives a snapshot and catches up. A follower leaves the
    /// replica set (gone, or one too many) only when enough in-sync copies on live nodes remain
    /// without it. One change per call.
    async fn reconcile(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        hosts: &HashSet<String>,
        drained: &HashSet<String>,
    ) -> Result<(), crate::cluster::ClusterError> {
        let record = match self.own_record().await {
            Ok(r) => r,
            Err(NotOwn::Lost(_)) => return Ok(()),
            Err(NotOwn::Unread(e)) => return Err(crate::cluster::ClusterError::Etcd(e)),
        };
        let gone: Vec<String> = {
            let mut missing = crate::sync::lock(&self.missing);
            missing.retain(|n, _| record.followers.contains(n) && !hosts.contains(n));
            let now = Instant::now();
            let replace_after = self.settings.replace_after;
            record
                .followers
                .iter()
                .filter(|f| {
                    if drained.contains(*f) {
                        return true;
                    }
                    if hosts.contains(*f) {
                        return false;
                    }
                    let since = *missing.entry((*f).clone()).or_insert(now);
                    !replace_after.is_zero() && since.elapsed() >= replace_after
                })
                .cloned()
                .collect()
        };
        let healthy = |n: &String| hosts.contains(n) && !drained.contains(n);
        let wanted = self.settings.replicas.saturating_sub(1);
        let staying = record.followers.iter().filter(|f| !gone.contains(f)).count();
        if staying < wanted {
            // A broker serving this shard from a copy runs on `serving`: that copy is its store.
            let serving = self.membership.acting_on();
            let mut load: HashMap<String, usize> = HashMap::new();
            for r in self.membership.shard_records().await? {
                for f in r.followers {
                    *load.entry(f).or_default() += 1;
                }
            }
            let candidate = hosts
                .iter()
                .filter(|n| {
                    healthy(n) && **n != self.shard && Some(n.as_str()) != serving && !record.followers.contains(n)
                })
                .min_by_key(|n| (load.get(*n).copied().unwrap_or(0), (*n).clone()));
            if let Some(node) = candidate {
                let mut next = record.clone();
                next.followers.push(node.clone());
                if let Some(r) = self.membership.put_shard_record_if(&next).await? {
                    tracing::info!(shard = self.shard, node, replacing = ?gone, "copying the shard to another node");
                    {
                        let mut st = crate::sync::lock(&self.state);
                        st.followers.insert(node.clone(), FollowerState::default());
                        st.record = Some(r);
                    }
                    self.start_link(tasks, node.clone(), shutdown);
                }
                return Ok(());
            }
        }
        let in_sync_without = |f: &String| record.in_sync.iter().filter(|n| *n != f && healthy(n)).count();
        let mut leaving: Vec<&String> = gone.iter().collect();
        if record.followers.len() > wanted {
            // One too many: a copy not in sync goes first, else the one added last.
            leaving.extend(record.followers.iter().filter(|f| !(record.in_sync.contains(f) && healthy(f))));
            leaving.extend(record.followers.iter().rev());
        }
        if let Some(node) = leaving.into_iter().find(|f| in_sync_without(f) >= wanted) {
            self.drop_follower(node).await.map_err(crate::cluster::ClusterError::Etcd)?;
        }
        Ok(())
    }

    /// Takes `node` out of the replica set: its stream stops, it leaves the in-sync set (etcd
    /// first, as when it stops acknowledging), then the followers. Its copy stays on its disk.
    async fn drop_follower(&self, node: &str) -> Result<(), String> {
        if let Some(stop) = crate::sync::lock(&self.links).remove(node) {
            stop.cancel();
        }
        self.set_in_sync(node, false).await?;
        if let Some(f) = crate::sync::lock(&self.state).followers.get_mut(node) {
            f.in_sync = false;
            f.joining_from = None;
        }
        self.acked.notify_all();
        for _ in 0..10 {
            let mut r = self.own_record().await?;
            r.followers.retain(|f| f != node);
            r.in_sync.retain(|f| f != node);
            if let Some(r) = self.membership.put_shard_record_if(&r).await.map_err(|e| e.to_string())? {
                let mut st = crate::sync::lock(&self.state);
                st.followers.remove(node);
                st.record = Some(r);
                crate::sync::lock(&self.missing).remove(node);
                tracing::info!(shard = self.shard, follower = node, "follower left the replica set");
                return Ok(());
            }
        }
        Err("the replica set kept changing".into())
    }

    /// On a drained node: hands the shard to an in-sync copy on a live, undrained node (of
    /// `hosts`, not in `drained`) without losing a write or waiting for a lease. Writes stop
    /// here; once that copy has acknowledged the last one, the replica set names it as the node
    /// taking the shard over (fencing this leader, as a failover does) and this node stops
    /// serving: its lease is given back, the copy's node starts serving the shard at once, and
    /// this process waits, drained.
    async fn step_down(&self, hosts: &HashSet<String>, drained: &HashSet<String>) -> Result<(), String> {
        if self.membership.superseded().is_cancelled() {
            return Ok(());
        }
        let target = {
            let st = crate::sync::lock(&self.state);
            st.followers
                .iter()
                .filter(|(n, f)| f.in_sync && hosts.contains(*n) && !drained.contains(*n))
                .max_by_key(|(_, f)| f.acked)
                .map(|(n, _)| n.clone())
        };
        let target = target.ok_or("no in-sync copy on a live, undrained node")?;
        tracing::warn!(shard = self.shard, target, "node drained: handing its shard to an in-sync copy");
        let seq = self.quiesce().await;
        let caught_up = {
            let deadline = Instant::now() + self.settings.ack_timeout * 2;
            loop {
                let acked = crate::sync::lock(&self.state).followers.get(&target).map_or(0, |f| f.acked);
                if acked >= seq {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let fenced = if caught_up { self.fence_for(&target).await } else { Err(format!("{target} is behind")) };
        if let Err(e) = fenced {
            crate::sync::lock(&self.state).handing_back = false;
            return Err(e);
        }
        tracing::warn!(shard = self.shard, target, seq, "shard handed over; this drained node stops serving");
        self.membership.supersede();
        Ok(())
    }

    /// The replica set as etcd holds it, while it is this leader's (its epoch). A set still at
    /// the epoch this leader last held it under, with no takeover begun, is moved to the
    /// node's current epoch first (compare-and-swap): the node claimed its membership again,
    /// under a new epoch, after its lease lapsed (an etcd outage, a stall), and nobody took
    /// the shard meanwhile. A takeover marks the set (epoch 0) before anything else, so the
    /// swap and a takeover exclude each other.
    async fn own_record(&self) -> Result<ShardRecord, NotOwn> {
        let unread = |e: crate::cluster::ClusterError| NotOwn::Unread(e.to_string());
        for _ in 0..10 {
            let r = self
                .membership
                .shard_record(&self.shard)
                .await
                .map_err(unread)?
                .ok_or_else(|| NotOwn::Unread("the shard has no replica set in etcd".into()))?;
            let epoch = self.membership.epoch();
            if r.leader_epoch == epoch {
                return Ok(r);
            }
            let held_at = crate::sync::lock(&self.state).record.as_ref().map(|h| h.leader_epoch);
            if r.leader_epoch == 0 || held_at != Some(r.leader_epoch) || !r.taken_by.is_empty() {
                return Err(NotOwn::Lost(format!(
                    "the shard is led at epoch {} now, this leader's is {epoch}",
                    r.leader_epoch
                )));
            }
            let mut next = r.clone();
            next.leader_epoch = epoch;
            if let Some(adopted) = self.membership.put_shard_record_if(&next).await.map_err(unread)? {
                tracing::info!(
                    shard = self.shard,
                    from = r.leader_epoch,
                    to = epoch,
                    "membership claimed again: the replica set follows this leader's new epoch"
                );
                crate::sync::lock(&self.state).record = Some(adopted.clone());
                return Ok(adopted);
            }
        }
        Err(NotOwn::Unread("the replica set kept changing".into()))
    }

    /// Names `target` as the node taking the shard over, with no leader epoch (no in-sync change
    /// of this leader succeeds from then on), if the replica set is still this leader's.
    async fn fence_for(&self, target: &str) -> Result<(), String> {
        let mut r = self.own_record().await?;
        if !r.in_sync.iter().any(|n| n == target) {
            return Err(format!("{target} left the in-sync set"));
        }
        r.leader_epoch = 0;
        r.taken_by = target.to_string();
        match self.membership.put_shard_record_if(&r).await.map_err(|e| e.to_string())? {
            Some(_) => Ok(()),
            None => Err("the replica set changed".into()),
        }
    }

    /// The shard's replica set: read, or created from live nodes when there is none and
    /// enough are live (`None`: not yet).
    async fn replica_set(&self) -> Result<Option<ShardRecord>, crate::cluster::ClusterError> {
        if let Some(r) = self.membership.shard_record(&self.shard).await? {
            return Ok(Some(r));
        }
        let wanted = self.settings.replicas.saturating_sub(1);
        let mut others: Vec<String> =
            self.membership.members().await?.into_iter().map(|m| m.record.id).filter(|id| *id != self.shard).collect();
        if others.len() < wanted {
            return Ok(None);
        }
        // Spread: start after this node in id order, so each node's followers differ.
        others.sort();
        let start = others.iter().position(|id| *id > self.shard).unwrap_or(0);
        let followers: Vec<String> = (0..wanted).map(|i| others[(start + i) % others.len()].clone()).collect();
        let record = ShardRecord {
            shard: self.shard.clone(),
            followers,
            in_sync: Vec::new(),
            leader_epoch: self.membership.epoch(),
            taken_by: String::new(),
            revision: 0,
        };
        match self.membership.put_shard_record_if(&record).await? {
            Some(r) => Ok(Some(r)),
            None => self.membership.shard_record(&self.shard).await,
        }
    }

    /// Makes the replica set this leader's (its epoch), by compare-and-swap: a leader serving
    /// the shard from a copy on another node (failover) drops that node from the followers,
    /// as its copy is now this leader's store.
    async fn adopt(&self, mut record: ShardRecord) -> Result<ShardRecord, String> {
        let epoch = self.membership.epoch();
        loop {
            if record.leader_epoch == epoch {
                return Ok(record);
            }
            let mut next = record.clone();
            next.leader_epoch = epoch;
            next.taken_by.clear();
            if let Some(host) = self.membership.acting_on() {
                next.followers.retain(|f| f != host);
                next.in_sync.retain(|f| f != host);
            }
            match self.membership.put_shard_record_if(&next).await.map_err(|e| e.to_string())? {
                Some(r) => return Ok(r),
                None => {
                    record = self
                        .membership
                        .shard_record(&self.shard)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("the replica set is gone")?;
                }
            }
        }
    }

    /// Stops taking writes and waits (up to 10 s) until none is in progress, before the
    /// shard is handed back to its returning node or over to another (drain).
    pub async fn quiesce(&self) -> u64 {
        crate::sync::lock(&self.state).handing_back = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (busy, seq) = {
                let st = crate::sync::lock(&self.state);
                (st.in_progress, st.seq)
            };
            if !busy || Instant::now() > deadline {
                return seq;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes the in-sync set with `node` added or removed, by compare-and-swap.
    async fn set_in_sync(&self, node: &str, in_sync: bool) -> Result<(), String> {
        for _ in 0..10 {
            let current = match self.own_record().await {
                Ok(r) => r,
                Err(NotOwn::Lost(e)) => {
                    // Another leader took the shard (this one was stopped or cut off past its lease).
                    self.membership.supersede();
                    return Err(format!("superseded: {e}"));
                }
                Err(NotOwn::Unread(e)) => return Err(e),
            };
            if in_sync && !current.followers.iter().any(|f| f == node) {
                return Err(format!("{node} no longer holds a copy of the shard"));
            }
            let mut next = current.clone();
            next.in_sync.retain(|n| n != node);
            if in_sync {
                next.in_sync.push(node.to_string());
                next.in_sync.sort();
            }
            if next.in_sync == current.in_sync {
                crate::sync::lock(&self.state).record = Some(current);
                return Ok(());
            }
            match self.membership.put_shard_record_if(&next).await {
                Ok(Some(r)) => {
                    crate::sync::lock(&self.state).record = Some(r);
                    tracing::info!(shard = self.shard, node, in_sync, "in-sync set changed");
                    return Ok(());
                }
                Ok(None) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the replica set kept changing".into())
    }

    fn in_sync_copies(st: &State) -> usize {
        1 + st.followers.values().filter(|f| f.in_sync).count()
    }

    /// Keeps a stream open to follower `node`, reconnecting after failures.
    async fn link(self: Arc<Self>, node: String, shutdown: CancellationToken) {
        let mut logged = false;
        while !shutdown.is_cancelled() {
            let streamed = tokio::select! {
                r = self.stream_to(&node, &shutdown) => r,
                _ = shutdown.cancelled() => return,
            };
            let error = streamed.err();
            match &error {
                Some(e) if !logged => {
                    tracing::warn!(shard = self.shard, follower = node, error = %e, "replication stream broken; reconnecting");
                    logged = true;
                }
                Some(_) => {}
                None => logged = false,
            }
            if let Some(f) = crate::sync::lock(&self.state).followers.get_mut(&node) {
                f.stream = Stream::Broken;
                if let Some(e) = error {
                    f.error = e;
                }
            }
            // A write waiting for it stops waiting (see `replicate`).
            self.acked.notify_all();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    fn request(&self, item: Item) -> ReplicateRequest {
        ReplicateRequest { shard: self.shard.clone(), epoch: self.membership.epoch(), item: Some(item) }
    }

    async fn stream_to(&self, node: &str, shutdown: &CancellationToken) -> Result<(), String> {
        let channel = self.membership.channel(node).await.map_err(|e| e.to_string())?;
        let mut client = ClusterClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<ReplicateRequest>(256);
        tx.send(self.request(Item::Hello(Hello {}))).await.map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        crate::cluster::peer::mark_as_node(&self.membership, &mut req);
        let mut answers = client.replicate(req).await.map_err(|s| s.message().to_string())?.into_inner();
        let hello = answers.message().await.map_err(|s| s.message().to_string())?.ok_or("no answer")?;
        // A copy whose latest write is at an epoch this shard's history left before that
        // sequence holds writes its successors never had: it gets a snapshot (truncation).
        let (last, oldest, diverged) = {
            let mut st = crate::sync::lock(&self.state);
            let diverged = st.history.successor_start(hello.epoch).is_some_and(|s| hello.acked_seq >= s);
            let (last, oldest) = (st.seq, st.log.front().map(|(s, _)| *s));
            let f = st.followers.entry(node.to_string()).or_default();
            f.stream = Stream::Open;
            f.error.clear();
            f.acked = if diverged || hello.acked_seq > last { 0 } else { hello.acked_seq };
            (last, oldest, diverged)
        };
        // From the log when it holds everything after the follower's position; else a snapshot.
        // A fresh copy (at 0) gets a snapshot too: the store holds what was written before it
        // was replicated.
        let mut next = hello.acked_seq + 1;
        let from_log = !diverged
            && hello.acked_seq > 0
            && hello.acked_seq <= last
            && (hello.acked_seq == last || oldest.is_some_and(|o| o <= next));
        if from_log {
            self.on_ack(node, hello.acked_seq).await;
        } else {
            if diverged {
                tracing::warn!(
                    shard = self.shard,
                    follower = node,
                    epoch = hello.epoch,
                    seq = hello.acked_seq,
                    "follower's copy diverged from the shard's history; sending a snapshot"
                );
            }
            next = self.send_snapshot(node, &tx).await? + 1;
        }
        let mut latest = self.latest.subscribe();
        loop {
            // Everything in the log from `next` on.
            let batches: Vec<(u64, Arc<Vec<u8>>)> = {
                let st = crate::sync::lock(&self.state);
                if st.log.front().is_some_and(|(s, _)| *s > next) && st.seq >= next {
                    return Err(format!("the log no longer holds sequence {next}; a snapshot follows"));
                }
                st.log.iter().filter(|(s, _)| *s >= next).cloned().collect()
            };
            for (seq, bytes) in batches {
                tx.send(self.request(Item::Append(Append { seq, batch: bytes.to_vec() })))
                    .await
                    .map_err(|_| "stream closed".to_string())?;
                next = seq + 1;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = latest.changed() => changed.map_err(|e| e.to_string())?,
                answer = answers.message() => {
                    let a = answer.map_err(|s| s.message().to_string())?.ok_or("the follower closed the stream")?;
                    self.on_ack(node, a.acked_seq).await;
                }
            }
        }
    }

    /// Records follower `node`'s acknowledgement; a follower outside the in-sync set that holds
    /// every acknowledged write joins it (etcd first); from then on writes wait for it too.
    async fn on_ack(&self, node: &str, acked: u64) {
        let rejoin = {
            let mut st = crate::sync::lock(&self.state);
            let (acknowledged, prepared) = (st.acknowledged, st.seq);
            let Some(f) = st.followers.get_mut(node) else { return };
            f.acked = f.acked.max(acked);
            if !f.in_sync && f.joining_from.is_none() && f.acked >= acknowledged {
                f.joining_from = Some(prepared);
            }
            !f.in_sync && f.joining_from.is_some_and(|j| f.acked >= j)
        };
        self.acked.notify_all();
        if rejoin {
            match self.set_in_sync(node, true).await {
                Ok(()) => {
                    // Still joining: no write was acknowledged without it while etcd was asked
                    // (one that was, because it did not answer in time, ended the join).
                    let joined = match crate::sync::lock(&self.state).followers.get_mut(node) {
                        Some(f) if f.joining_from.is_some() => {
                            f.in_sync = true;
                            f.joining_from = None;
                            true
                        }
                        _ => false,
                    };
                    if !joined {
                        // Listed in sync while missing a write: out of the set again.
                        if let Err(e) = self.set_in_sync(node, false).await {
                            tracing::warn!(shard = self.shard, follower = node, error = %e, "in-sync set not updated");
                        }
                    }
                    self.acked.notify_all();
                }
                Err(e) => tracing::warn!(shard = self.shard, follower = node, error = %e, "in-sync set not updated"),
            }
        }
    }

    /// Sends a snapshot of the whole store; returns the sequence it stands at. Writes go on
    /// meanwhile: the follower then gets every batch after that sequence, which brings each
    /// key a page read while it changed to its latest value (puts and deletes of whole keys,
    /// applied in order, are idempotent).
    async fn send_snapshot(&self, node: &str, tx: &mpsc::Sender<ReplicateRequest>) -> Result<u64, String> {
        let at = {
            let mut st = crate::sync::lock(&self.state);
            let at = st.seq;
            st.pins.push(at);
            if let Some(f) = st.followers.get_mut(node) {
                f.snapshots += 1;
            }
            at
        };
        let result = self.snapshot_pages(at, tx).await;
        let mut st = crate::sync::lock(&self.state);
        if let Some(i) = st.pins.iter().position(|p| *p == at) {
            st.pins.remove(i);
        }
        drop(st);
        tracing::info!(shard = self.shard, follower = node, at, ok = result.is_ok(), "snapshot sent");
        result.map(|()| at)
    }

    async fn snapshot_pages(&self, at: u64, tx: &mpsc::Sender<ReplicateRequest>) -> Result<(), String> {
        let mut after: Option<Vec<u8>> = None;
        let mut first = true;
        loop {
            let (batch, next, last) =
                super::snapshot_page(self.store.clone(), after.take()).await.map_err(|e| e.to_string())?;
            after = next;
            let chunk = SnapshotChunk { first, entries: batch.encode(), done_at_seq: at, last };
            tx.send(self.request(Item::Snapshot(chunk))).await.map_err(|_| "stream closed".to_string())?;
            first = false;
            if last {
                return Ok(());
            }
        }
    }

    fn trim(&self, st: &mut State) {
        let keep_from = st.pins.iter().min().map_or(u64::MAX, |p| p + 1);
        while st.log_bytes > self.settings.log_bytes {
            match st.log.front() {
                Some((s, b)) if *s < keep_from => {
                    st.log_bytes -= b.len();
                    st.log.pop_front();
                }
                _ => break,
            }
        }
    }
}

impl Replicator for Leader {
    fn abandoned(&self) -> bool {
        self.membership.superseded().is_cancelled()
    }

    fn writable(&self) -> Result<(), String> {
        if self.abandoned() {
            return Err(format!("shard {} is served by another process now", self.shard));
        }
        let st = crate::sync::lock(&self.state);
        if st.record.is_none() {
            return Err(format!("shard {} has no replica set yet (waiting for nodes to join)", self.shard));
        }
        if st.handing_back {
            return Err(format!("shard {} is moving to another node", self.shard));
        }
        let have = Self::in_sync_copies(&st);
        if have < self.settings.min_insync {
            return Err(format!(
                "shard {}: {have} in-sync copies, --min-insync-replicas is {}",
                self.shard, self.settings.min_insync
            ));
        }
        Ok(())
    }

    fn prepare(&self, batch: &mut Batch) -> u64 {
        let mut st = crate::sync::lock(&self.state);
        st.seq += 1;
        st.in_progress = true;
        let epoch = self.membership.epoch();
        if st.history.0.last().is_none_or(|(e, _)| *e != epoch) {
            let seq = st.seq;
            st.history.0.push((epoch, seq));
            st.history.write(batch);
        }
        Position { epoch, seq: st.seq }.write(batch);
        st.seq
    }

    fn replicate(&self, seq: u64, batch: &Batch) -> Result<(), String> {
        {
            let mut st = crate::sync::lock(&self.state);
            if st.log.back().is_none_or(|(s, _)| *s < seq) {
                let bytes = Arc::new(batch.encode());
                st.log_bytes += bytes.len();
                st.log.push_back((seq, bytes));
                self.trim(&mut st);
            }
        }
        self.latest.send_replace(seq);
        let deadline = Instant::now() + self.settings.ack_timeout;
        let mut st = crate::sync::lock(&self.state);
        // In-sync followers, and joining ones for the groups after their joining point.
        let lagging = |st: &State| -> Vec<String> {
            st.followers
                .iter()
                .filter(|(_, f)| (f.in_sync || f.joining_from.is_some_and(|j| j < seq)) && f.acked < seq)
                .map(|(n, _)| n.clone())
                .collect()
        };
        loop {
            // A lagging follower whose stream broke is late at once: a dead follower's
            // connection resets, a frozen one's fails its ping, and neither acknowledges.
            if lagging(&st).iter().all(|n| st.followers.get(n).is_some_and(|f| f.stream == Stream::Broken)) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = match self.acked.wait_timeout(st, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let late = lagging(&st);
        drop(st);
        // Out of the in-sync set in etcd before anything is acknowledged without them (a
        // joining follower just stops joining).
        for node in &late {
            let joining = {
                let mut st = crate::sync::lock(&self.state);
                match st.followers.get_mut(node) {
                    Some(f) if !f.in_sync => {
                        f.joining_from = None;
                        true
                    }
                    _ => false,
                }
            };
            if joining {
                continue;
            }
            self.rt.block_on(self.set_in_sync(node, false))?;
            if let Some(f) = crate::sync::lock(&self.state).followers.get_mut(node) {
                f.in_sync = false;
            }
            tracing::warn!(
                shard = self.shard,
                follower = node,
                seq,
                "follower left the in-sync set (no acknowledgement in time, or its stream broke)"
            );
        }
        let mut st = crate::sync::lock(&self.state);
        let have = Self::in_sync_copies(&st);
        if have < self.settings.min_insync {
            return Err(format!(
                "sequence {seq} is on {have} in-sync copies, --min-insync-replicas is {}",
                self.settings.min_insync
            ));
        }
        st.in_progress = false;
        st.acknowledged = st.acknowledged.max(seq);
        Ok(())
    }
}
