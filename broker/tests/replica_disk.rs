//! A follower's disk (a real etcd, three broker processes with `--replicas 3
//! --min-insync-replicas 2`): a node whose disk falls under `--min-free-disk-bytes` stops
//! writing copies of the other nodes' shards, so their writes cannot take the room its own store
//! needs; a copy whose write failed anyway (its filesystem full) is opened again once space is
//! back. Either way the follower leaves the in-sync set, the status says why, sends go on, and
//! the follower catches up with no restart, its copies then equal to the leaders' stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::replicated::{
    admin, contents, create_orders, missing_after_receiving, shards, wait_in_sync, Messaging, Node, IDS, ONE_AT_A_TIME,
};
use common::{send_request, Etcd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use txmq_broker::store::{SledStore, Store};
use txmq_proto::admin as pb;
use txmq_proto::v2;

const GIB: u64 = 1 << 30;

fn start(etcd: &str, dir: &Path, id: &str, min_free: u64) -> Node {
    common::replicated::start(etcd, dir, id, &["--min-free-disk-bytes", &min_free.to_string()])
}

/// Node 2 as a follower of node `shard`'s shard.
fn n2_of(shards: &[pb::ShardStatus], shard: &str) -> Option<pb::ReplicaStatus> {
    shards.iter().find(|s| s.shard == shard)?.replicas.iter().find(|r| r.node == "n2").cloned()
}

/// Waits until node 2 is out of the in-sync set of nodes 1 and 3's shards, its stream broken
/// with an error that `says`; sends a message through `client` before each look.
async fn wait_n2_out(addr: &str, client: &mut Messaging, sent: &mut Vec<String>, says: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let id = format!("m{}", sent.len());
        let mut req = send_request("orders", &id);
        req.messages[0].body = vec![b'x'; 4096];
        let r = client.send_message(req).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32, "send {id}: one full disk refuses no send");
        sent.push(id);
        let s = shards(addr).await;
        let out = |shard| n2_of(&s, shard).is_some_and(|r| !r.in_sync && r.error.contains(says));
        if out("n1") && out("n3") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 still in sync, or not saying {says:?}, after {} sends: {s:#?}",
            sent.len()
        );
    }
}

async fn send_all(client: &mut Messaging, sent: &mut Vec<String>, n: usize) {
    for _ in 0..n {
        let id = format!("m{}", sent.len());
        let r = client.send_message(send_request("orders", &id)).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32, "send {id}");
        sent.push(id);
    }
}

/// Three temporary data directories, and their paths.
fn data_dirs() -> (Vec<tempfile::TempDir>, Vec<PathBuf>) {
    let tmp: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dirs = tmp.iter().map(|d| d.path().to_path_buf()).collect();
    (tmp, dirs)
}

/// Three nodes on `dirs` (node 2's floor `n2_min_free`, the others' none), every shard in sync,
/// a 6-queue topic `orders`, and 30 sends through node `via` (0-based) on every copy; that
/// node's address, a client of it, and the ids sent.
async fn started(
    etcd: &Etcd,
    dirs: &[PathBuf],
    n2_min_free: u64,
    via: usize,
) -> (Vec<Node>, String, Messaging, Vec<String>) {
    let floor = |id: &str| if id == "n2" { n2_min_free } else { 0 };
    let nodes: Vec<Node> = IDS.iter().zip(dirs).map(|(id, d)| start(&etcd.url, d, id, floor(id))).collect();
    let addr = nodes[via].addr.clone();
    wait_in_sync(&addr, &IDS, Duration::from_secs(30)).await;
    create_orders(&addr).await;
    let mut client = Messaging::connect(format!("http://{addr}")).await.unwrap();
    let mut sent = Vec::new();
    send_all(&mut client, &mut sent, 30).await;
    wait_in_sync(&addr, &IDS, Duration::from_secs(10)).await;
    (nodes, addr, client, sent)
}

/// Space is back on node 2: every shard is in sync again within 30 s, without a restart, and
/// stays so through 10 more sends; then, with every node stopped, node 2's copies equal the
/// leaders' stores.
async fn caught_up(nodes: Vec<Node>, client: &mut Messaging, sent: &mut Vec<String>, dirs: &[PathBuf]) {
    let n1 = nodes[0].addr.clone();
    wait_in_sync(&n1, &IDS, Duration::from_secs(30)).await;
    let back = shards(&n1).await;
    assert!(n2_of(&back, "n1").unwrap().error.is_empty(), "the error is gone once the stream is open: {back:#?}");
    send_all(client, sent, 10).await;
    wait_in_sync(&n1, &IDS, Duration::from_secs(10)).await;
    drop(nodes);
    assert_copies_equal(dirs);
}

/// With every node stopped: node 2's copies of nodes 1 and 3 are their stores, key for key.
fn assert_copies_equal(dirs: &[PathBuf]) {
    for (leader, shard) in [(&dirs[0], "n1"), (&dirs[2], "n3")] {
        let want = contents(&SledStore::open(leader).unwrap());
        let got = contents(&SledStore::open(&dirs[1].join("replicas").join(shard)).unwrap());
        assert_eq!(got.len(), want.len(), "node 2's copy of {shard}");
        assert!(got == want, "node 2's copy of {shard} differs from its leader's store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_under_its_disk_floor_writes_no_copies_and_catches_up_once_space_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start();
    let (_tmp, dirs) = data_dirs();
    let free = txmq_broker::disk::DiskSpace::new(&dirs[1], 0).free().unwrap();
    assert!(free > 3 * GIB, "this test needs 3 GiB free on the temporary directory's disk; {free} bytes are");
    // Node 2's floor is 1 GiB under the free space; the other nodes check nothing.
    let (nodes, n1, mut client, mut sent) = started(&etcd, &dirs, free - GIB, 0).await;

    // 2 GiB taken: node 2 is 1 GiB under its floor. It refuses the copies, leaves the in-sync
    // sets, and the status says why; every send is taken (node 2's queues by the next owner).
    let junk = dirs[1].join("junk");
    let taken = Command::new("fallocate").args(["-l", "2GiB"]).arg(&junk).status().unwrap();
    assert!(taken.success(), "fallocate of 2 GiB");
    wait_n2_out(&n1, &mut client, &mut sent, "copies refused", Duration::from_secs(15)).await;
    let r = shards(&n1).await;
    let why = n2_of(&r, "n1").unwrap().error;
    assert!(why.contains("--min-free-disk-bytes"), "the status names the flag: {why}");
    send_all(&mut client, &mut sent, 30).await;
    let lagging = shards(&n1).await;
    assert!(n2_of(&lagging, "n1").unwrap().lag > 0, "node 2 wrote no copy meanwhile: {lagging:#?}");
    // Node 2's own store is writable: it took no write that could fill the disk.
    let st = admin(&nodes[1].addr).await.broker_status(pb::BrokerStatusRequest {}).await.unwrap().into_inner();
    assert!(st.store_writable, "node 2's store is writable: {st:?}");

    // Space back: node 2 catches up and rejoins, without a restart.
    std::fs::remove_file(&junk).unwrap();
    caught_up(nodes, &mut client, &mut sent, &dirs).await;
    drop(etcd);
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        let out = out.expect("this test runs `mount` (util-linux)");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs, as root with CAP_SYS_ADMIN: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }

    /// Takes all of the filesystem's free space but `left` bytes with a file; its path.
    fn fill_but(&self, left: u64) -> PathBuf {
        let avail = txmq_broker::disk::DiskSpace::new(&self.0, 0).free().unwrap();
        let junk = self.0.join("junk");
        let taken = Command::new("fallocate").arg("-l").arg((avail - left).to_string()).arg(&junk).status().unwrap();
        assert!(taken.success(), "fallocate on the tmpfs");
        junk
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_write_failed_is_opened_again_and_catches_up_once_space_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start();
    let (_tmp, dirs) = data_dirs();
    // Node 2's copies, and only they, on a filesystem of their own: its own store stays on the
    // temporary directory's disk, and no floor is set.
    let mount = Mount::tmpfs(&dirs[1].join("replicas"), "64m");
    let (nodes, n1, mut client, mut sent) = started(&etcd, &dirs, 0, 0).await;

    // The copies' filesystem filled up but for 1 MiB: their writes fail, and node 2 leaves the
    // in-sync sets of nodes 1 and 3, the status naming the failure. Sends go on.
    let junk = mount.fill_but(1 << 20);
    wait_n2_out(&n1, &mut client, &mut sent, "No space left on device", Duration::from_secs(60)).await;

    // Space back: the copies are opened again and catch up, without a restart of node 2.
    std::fs::remove_file(&junk).unwrap();
    caught_up(nodes, &mut client, &mut sent, &dirs).await;
    drop(mount);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_fails_stops_and_an_in_sync_copy_serves_its_shard() {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start();
    let (_tmp, dirs) = data_dirs();
    // Node 1's whole data directory on a filesystem of its own, with no floor: its store's
    // writes fail once that is full.
    let mount = Mount::tmpfs(&dirs[0], "64m");
    let (mut nodes, n2, mut client, mut sent) = started(&etcd, &dirs, 0, 1).await;

    // Node 1's disk full but for 1 MiB: sends through node 2 fill it. A flush of node 1's store
    // fails, and node 1 stops (exit status 1), saying why.
    let junk = mount.fill_but(1 << 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(status) = nodes[0].child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "node 1 still running 60 s after its disk filled ({} sends)", sent.len());
        let id = format!("m{}", sent.len());
        let mut req = send_request("orders", &id);
        req.messages[0].body = vec![b'x'; 4096];
        if let Ok(r) = client.send_message(req).await {
            if r.into_inner().status.unwrap().code == v2::Code::Ok as i32 {
                sent.push(id);
            }
        }
    };
    let stopped = Instant::now();
    eprintln!("node 1 stopped after {} sends through node 2", sent.len());
    assert_eq!(exit.code(), Some(1), "node 1 exits with a failure: {exit:?}");
    let log = nodes[0].log.take().unwrap().join().unwrap();
    assert!(
        log.iter().any(|l| l.contains("refuses writes after a failed flush") && l.contains("in-sync copy")),
        "node 1 says why it stopped: {}",
        log.join("\n")
    );

    // Node 1's shard is served from an in-sync copy at once (node 1 gave its lease back), and
    // every send through node 2 is taken.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = shards(&n2).await;
        if s.iter().any(|sh| sh.shard == "n1" && sh.leader != "n1" && sh.error.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "node 1's shard not served from a copy: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("node 1's shard served from a copy {:?} after node 1 stopped", stopped.elapsed());
    send_all(&mut client, &mut sent, 30).await;

    // Every acknowledged send is received through node 2, those stored on node 1 too.
    let missing = missing_after_receiving(&mut client, &sent, Duration::from_secs(60)).await;
    assert!(missing.is_empty(), "acknowledged sends not received: {missing:?}");

    // Space back, node 1 started again on its data: it rejoins as after a crash, gets its shard
    // back, and every shard is in sync again.
    std::fs::remove_file(&junk).unwrap();
    nodes[0] = start(&etcd.url, &dirs[0], "n1", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = shards(&n2).await;
        if s.iter().any(|sh| sh.shard == "n1" && sh.leader == "n1") {
            break;
        }
        assert!(Instant::now() < deadline, "node 1's shard not handed back: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_in_sync(&n2, &IDS, Duration::from_secs(60)).await;
    send_all(&mut client, &mut sent, 10).await;
    drop(nodes);
    drop(mount);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_is_deleted_and_made_again_from_a_snapshot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start();
    let (_tmp, dirs) = data_dirs();
    let (mut nodes, n1, mut client, mut sent) = started(&etcd, &dirs, 0, 0).await;

    // Node 2 stopped, its copy of node 1's store damaged (a replication position of 3 bytes, a
    // record no broker writes), 10 sends meanwhile, node 2 started again.
    nodes[1].child.kill().unwrap();
    nodes[1].child.wait().unwrap();
    {
        let copy = SledStore::open(&dirs[1].join("replicas").join("n1")).unwrap();
        let mut b = txmq_broker::store::Batch::new();
        b.put_raw(txmq_broker::store::Key::Meta("repl-pos".into()).encode(), vec![1, 2, 3]);
        copy.apply(&b).unwrap();
        copy.flush().unwrap();
    }
    send_all(&mut client, &mut sent, 10).await;
    nodes[1] = start(&etcd.url, &dirs[1], "n2", 0);

    // The damaged copy is deleted and made again from a snapshot of node 1's store.
    wait_in_sync(&n1, &IDS, Duration::from_secs(30)).await;
    let s = shards(&n1).await;
    let n2 = n2_of(&s, "n1").unwrap();
    assert!(n2.snapshots >= 1, "node 2's copy of node 1 was made again from a snapshot: {n2:?}");
    caught_up(nodes, &mut client, &mut sent, &dirs).await;
    drop(etcd);
}
