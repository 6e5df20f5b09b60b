//! A cluster with replicas (`--replicas 3 --min-insync-replicas 2`, a real etcd, three broker
//! processes) through an etcd outage longer than the lease, etcd frozen or killed and started
//! again: sends go on through it where no metadata is needed, every answer is a RocketMQ
//! status, no node stops serving its own shard (a node whose lease lapsed claims its
//! membership again and keeps its shard), a node killed during the outage is failed over once
//! etcd is back and gets its shard back, and every acknowledged send is received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::replicated::{
    missing_after_receiving, start, three_nodes, wait_in_sync, Load, Messaging, Node, IDS, ONE_AT_A_TIME,
};
use common::Etcd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Stops every node; the lines of their logs where a node stopped serving its shard and ran
/// again (a restart within the process, which clients see as refused connections).
fn restarts(nodes: Vec<Node>) -> Vec<String> {
    let mut out = Vec::new();
    for mut n in nodes {
        let _ = n.child.kill();
        let _ = n.child.wait();
        let lines = n.log.take().unwrap().join().unwrap();
        out.extend(lines.into_iter().filter(|l| l.contains("no longer serves its shard")));
    }
    out
}

/// How etcd is out.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// SIGSTOP, then SIGCONT: connections stay open and nothing answers.
    Frozen,
    /// SIGKILL, then started again on its data directory: connections reset, leases restored.
    Killed,
}

/// Three nodes in sync, `orders` created, and sends through node 1 going on for 2 s.
struct Cluster {
    etcd: Etcd,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Node>,
    n1: String,
    load: Load,
}

async fn started() -> Cluster {
    let (etcd, dirs, nodes) = three_nodes().await;
    let n1 = nodes[0].addr.clone();
    let load = Load::start(&n1, 1, "e").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Cluster { etcd, dirs, nodes, n1, load }
}

impl Cluster {
    /// Every shard in sync again: sends go on 2 s more and stop; every acknowledged one is
    /// received through node 1, and no node stopped serving its own shard.
    async fn check(self, what: &str) {
        wait_in_sync(&self.n1, &IDS, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sends = self.load.finish().await;
        eprintln!(
            "{what}: {} acknowledged, refused {:?}, first {:?}",
            sends.acked.len(),
            sends.refused,
            sends.first_refusal
        );
        let mut client = Messaging::connect(format!("http://{}", self.n1)).await.unwrap();
        let missing = missing_after_receiving(&mut client, &sends.acked, Duration::from_secs(60)).await;
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged sends not received: {missing:?}",
            missing.len(),
            sends.acked.len()
        );
        let restarted = restarts(self.nodes);
        assert!(restarted.is_empty(), "no node stops serving its own shard: {restarted:#?}");
        drop(self.etcd);
    }
}

/// etcd out for four leases (2 s each): no lease renewed, no metadata read or written. Sends
/// are acknowledged meanwhile, and [`Cluster::check`] holds after.
async fn ride_out(outage: Outage) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = started().await;
    let before = c.load.acked.load(Ordering::Relaxed);
    match outage {
        Outage::Frozen => c.etcd.signal("STOP"),
        Outage::Killed => c.etcd.kill(),
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = c.load.acked.load(Ordering::Relaxed) - before;
    match outage {
        Outage::Frozen => c.etcd.signal("CONT"),
        Outage::Killed => c.etcd.restart(),
    }
    eprintln!("{outage:?}: {during} sends acknowledged while etcd was out");
    assert!(during > 0, "sends to topics already placed go on while etcd is out");
    c.check(&format!("{outage:?}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_cluster_rides_out_etcd_frozen_past_the_lease_and_loses_nothing() {
    ride_out(Outage::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_cluster_rides_out_etcd_killed_and_restarted_and_loses_nothing() {
    ride_out(Outage::Killed).await;
}

/// Node 3 killed while etcd is frozen: writes that need the in-sync sets to shrink are refused
/// (never OK) until etcd is back; then node 3's shard is served from a copy, node 3 started
/// again gets it back, and [`Cluster::check`] holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_etcd_is_frozen_fails_over_once_etcd_is_back_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = started().await;
    c.etcd.signal("STOP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.nodes[2].child.kill().unwrap();
    c.nodes[2].child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    c.etcd.signal("CONT");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = common::replicated::shards(&c.n1).await;
        if s.iter().any(|sh| sh.shard == "n3" && sh.leader != "n3") {
            break;
        }
        assert!(Instant::now() < deadline, "n3's shard not taken over: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.nodes[2] = start(&c.etcd.url, c.dirs[2].path(), "n3", &[]);
    c.check("node 3 killed").await;
}
