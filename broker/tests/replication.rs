//! Replication of each node's store (a real etcd, three broker processes with `--replicas 3
//! --min-insync-replicas 2`): every acknowledged write is on the in-sync copies; with two of
//! three copies gone, writes are refused with a retryable status within a bounded time and
//! never acknowledged; a returning replica catches up (from the log, or from a snapshot when
//! it missed more than the log keeps) and service resumes with nothing lost; at rest, each
//! follower's copy is the leader's store, key for key; and a node whose disk is lost comes back
//! on a follower's copy with every acknowledged message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::replicated::{
    admin, contents, create_orders, missing_after_receiving, shards, wait_in_sync, Messaging, Node,
};
use common::{send_request, Etcd};
use std::time::{Duration, Instant};
use txmq_broker::store::SledStore;
use txmq_proto::admin as pb;
use txmq_proto::v2;

/// Node `id`, its recent-writes log of 64 KiB (a follower that misses more gets a snapshot).
fn start(etcd: &str, dir: &std::path::Path, id: &str) -> Node {
    common::replicated::start(etcd, dir, id, &["--replication-log-bytes", "65536"])
}

/// Sends one message through `addr`; its status code.
async fn send(client: &mut Messaging, topic: &str, id: &str) -> i32 {
    let mut req = tonic::Request::new(send_request(topic, id));
    req.set_timeout(Duration::from_secs(10));
    match client.send_message(req).await {
        Ok(r) => r.into_inner().status.unwrap().code,
        Err(s) => panic!("transport error {s:?} (the broker must answer a RocketMQ status)"),
    }
}

async fn stored(addr: &str, topic: &str) -> u64 {
    let r = admin(addr).await.describe_topic(pb::DescribeTopicRequest { name: topic.into() }).await.unwrap();
    r.into_inner().message_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_on_the_in_sync_copies_and_quorum_is_enforced() {
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids = ["n1", "n2", "n3"];
    let mut nodes: Vec<Option<Node>> =
        ids.iter().zip(&dirs).map(|(id, d)| Some(start(&etcd.url, d.path(), id))).collect();
    let n1 = nodes[0].as_ref().unwrap().addr.clone();
    let shards_now = wait_in_sync(&n1, &ids, Duration::from_secs(30)).await;
    // Each node leads its own shard, followed by the two others.
    for s in &shards_now {
        let followers: Vec<&str> = s.replicas.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(followers.len(), 2);
        assert!(!followers.contains(&s.shard.as_str()), "{s:?}");
        assert!(s.epoch > 0);
    }
    create_orders(&n1).await;

    // 150 sends through node 1, spread over the three shards: all acknowledged.
    let mut client = Messaging::connect(format!("http://{n1}")).await.unwrap();
    for i in 0..150 {
        assert_eq!(send(&mut client, "orders", &format!("a{i}")).await, v2::Code::Ok as i32, "send a{i}");
    }
    assert_eq!(stored(&n1, "orders").await, 150);
    wait_in_sync(&n1, &ids, Duration::from_secs(10)).await;

    // Nodes 2 and 3 killed: node 1's shard has one copy left, below --min-insync-replicas 2.
    // Sends through node 1 (the only live owner) are refused, each within a bounded time,
    // with a status the official clients retry; none is acknowledged.
    nodes[1] = None;
    nodes[2] = None;
    for i in 0..6 {
        let started = Instant::now();
        let code = send(&mut client, "orders", &format!("refused{i}")).await;
        let took = started.elapsed();
        assert_eq!(code, v2::Code::InternalServerError as i32, "refused{i} must not be acknowledged");
        assert!(took < Duration::from_secs(5), "refused{i} took {took:?}");
    }
    let s = shards(&n1).await;
    let mine = s.iter().find(|s| s.shard == "n1").unwrap();
    assert!(mine.in_sync.is_empty(), "both followers left node 1's in-sync set in etcd: {mine:?}");

    // Node 2 back on its data: it catches up from node 1's log, rejoins, and sends succeed.
    nodes[1] = Some(start(&etcd.url, dirs[1].path(), "n2"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if send(&mut client, "orders", "after-n2").await == v2::Code::Ok as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "sends not resumed within 30 s of node 2's return");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Node 3 missed more than node 1 keeps in its log (64 KiB): 400 messages of 1 KiB. (Node 3's
    // shard is served from a copy meanwhile, and refuses writes until that has two copies in
    // sync again: a refused send is retried, as clients do.)
    let body = vec![b'x'; 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..400 {
        loop {
            let mut req = send_request("orders", &format!("big{i}"));
            req.messages[0].body = body.clone();
            let r = client.send_message(req).await.unwrap().into_inner();
            if r.status.unwrap().code == v2::Code::Ok as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "big{i} not accepted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nodes[2] = Some(start(&etcd.url, dirs[2].path(), "n3"));
    let s = wait_in_sync(&n1, &ids, Duration::from_secs(60)).await;
    let n3_of_n1 =
        s.iter().find(|s| s.shard == "n1").unwrap().replicas.iter().find(|r| r.node == "n3").unwrap().clone();
    assert!(n3_of_n1.snapshots >= 1, "node 3 caught up on node 1's shard by a snapshot: {n3_of_n1:?}");

    // Nothing acknowledged is lost (refused writes may be stored too: applied on node 1 before
    // its followers were found gone, replicated once they return; the ids are checked below).
    let count = stored(&n1, "orders").await;
    assert!(count >= 551, "150 + 1 + 400 acknowledged: {count}");

    // At rest, each follower's copy of node 1's store is that store, key for key.
    for n in nodes.iter_mut() {
        *n = None;
    }
    let leader = SledStore::open(dirs[0].path()).unwrap();
    let want = contents(&leader);
    assert!(want.len() > 150, "the store holds its third of the messages: {} keys", want.len());
    for d in &dirs[1..] {
        let copy = SledStore::open(&d.path().join("replicas").join("n1")).unwrap();
        let got = contents(&copy);
        assert_eq!(got.len(), want.len(), "copy in {:?}", d.path());
        assert!(got == want, "the copy differs from the leader's store");
    }
    drop(leader);

    // Node 1's disk is lost: node 1 comes back on a copy of node 3's replica of its store, and
    // every acknowledged message is consumed (through node 2).
    let restored = tempfile::tempdir().unwrap();
    copy_dir(&dirs[2].path().join("replicas").join("n1"), restored.path());
    std::fs::remove_dir_all(dirs[0].path()).unwrap();
    nodes[0] = Some(start(&etcd.url, restored.path(), "n1"));
    nodes[1] = Some(start(&etcd.url, dirs[1].path(), "n2"));
    nodes[2] = Some(start(&etcd.url, dirs[2].path(), "n3"));
    let n2 = nodes[1].as_ref().unwrap().addr.clone();
    wait_in_sync(&n2, &ids, Duration::from_secs(30)).await;
    let mut acked: std::collections::BTreeSet<String> = (0..150).map(|i| format!("a{i}")).collect();
    acked.insert("after-n2".into());
    acked.extend((0..400).map(|i| format!("big{i}")));
    let mut consumer = Messaging::connect(format!("http://{n2}")).await.unwrap();
    let missing = missing_after_receiving(&mut consumer, &acked, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "acknowledged messages lost with node 1's disk: {missing:?}");
    drop(etcd);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
