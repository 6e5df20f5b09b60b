//! A node of a cluster with replicas (`--replicas 3 --min-insync-replicas 2`, a real etcd,
//! three broker processes) stopped with SIGTERM under load: it exits with status 0, rather than
//! running again as a returning node when its shard is taken over while it drains, and every
//! acknowledged send is then received through another node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::replicated::{create_orders, missing_after_receiving, send_until, start, wait_in_sync, Messaging, Node};
use common::Etcd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDS: [&str; 3] = ["n1", "n2", "n3"];

/// Node 1 stopped with SIGTERM while eight senders write through node 2: it exits 0 within
/// 20 s without running again, and every acknowledged send is then received through node 2.
/// Its shard's messages are reached only once an in-sync copy serves it: before the stop kept
/// its replication streams and lease through the drain, the writes in flight emptied the
/// in-sync set in about half the runs (12–15% of the sends not received).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_under_load_exits_zero_and_loses_no_acknowledged_send() {
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = IDS.iter().zip(&dirs).map(|(id, d)| start(&etcd.url, d.path(), id, &[])).collect();
    let n2 = nodes[1].addr.clone();
    wait_in_sync(&n2, &IDS, Duration::from_secs(30)).await;
    create_orders(&n2).await;
    // Eight senders, so that node 1 has writes in flight when it is stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let client = Messaging::connect(format!("http://{n2}")).await.unwrap();
    let senders: Vec<_> = (0..8)
        .map(|s| tokio::spawn(send_until(client.clone(), format!("s{s}-"), stop.clone(), Arc::default())))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // SIGTERM node 1 while sends land on its shard: it drains and exits 0.
    let term = std::process::Command::new("kill").args(["-TERM", &nodes[0].child.id().to_string()]).status();
    assert!(term.unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = nodes[0].child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node 1 still running 20 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = nodes[0].log.take().unwrap().join().unwrap();
    let rejoined: Vec<&String> = log.iter().filter(|l| l.contains("rejoining")).collect();
    assert!(status.success() && rejoined.is_empty(), "node 1 exited {status:?}; {rejoined:#?}");

    // Its shard is served from a copy; every acknowledged send is received through node 2.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap().acked);
    }
    let mut client = Messaging::connect(format!("http://{n2}")).await.unwrap();
    let missing = missing_after_receiving(&mut client, &acked, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "{} of {} acknowledged sends not received: {missing:?}", missing.len(), acked.len());
    drop(nodes);
}
