//! A follower's disk (a real etcd, three broker processes with `--replicas 3
//! --min-insync-replicas 2`): a node whose disk falls under `--min-free-disk-bytes` stops
//! writing copies of the other nodes' shards, so their writes cannot take the room its own store
//! needs; a copy whose write failed anyway (its filesystem full) is opened again once space is
//! back. Either way the follower leaves the in-sync set, the status says why, sends go on, and
//! the follower catches up with no restart, its copies then equal to the leaders' stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{send_request, start_broker, Etcd};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use txmq_broker::store::{SledStore, Store};
use txmq_proto::admin as pb;
use txmq_proto::v2;

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;
type Messaging = v2::messaging_service_client::MessagingServiceClient<tonic::transport::Channel>;

const GIB: u64 = 1 << 30;
const IDS: [&str; 3] = ["n1", "n2", "n3"];

/// Both tests start three brokers and an etcd on two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Node {
    child: Child,
    addr: String,
    _log: std::thread::JoinHandle<Vec<String>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(etcd: &str, dir: &Path, id: &str, min_free: u64) -> Node {
    let min_free = min_free.to_string();
    let args = [
        "--etcd",
        etcd,
        "--node-id",
        id,
        "--etcd-lease-ttl",
        "2s",
        "--metrics-listen",
        "off",
        "--replicas",
        "3",
        "--min-insync-replicas",
        "2",
        "--replica-ack-timeout",
        "1s",
        "--min-free-disk-bytes",
        &min_free,
    ];
    let (child, addr, log) = start_broker(dir, &args);
    Node { child, addr, _log: log }
}

async fn admin(addr: &str) -> Admin {
    Admin::connect(format!("http://{addr}")).await.unwrap()
}

async fn shards(addr: &str) -> Vec<pb::ShardStatus> {
    let r = admin(addr).await.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    r.shards
}

/// Node 2 as a follower of node `shard`'s shard.
fn n2_of(shards: &[pb::ShardStatus], shard: &str) -> Option<pb::ReplicaStatus> {
    shards.iter().find(|s| s.shard == shard)?.replicas.iter().find(|r| r.node == "n2").cloned()
}

/// Waits until every shard has both followers in sync with lag 0.
async fn wait_in_sync(addr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = shards(addr).await;
        let ok = IDS.iter().all(|n| {
            s.iter().any(|sh| {
                sh.shard == *n && sh.replicas.len() == 2 && sh.replicas.iter().all(|r| r.in_sync && r.lag == 0)
            })
        });
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "not every shard in sync within {within:?}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

async fn create_orders(addr: &str) {
    let r = admin(addr)
        .await
        .create_topic(pb::CreateTopicRequest {
            name: "orders".into(),
            r#type: pb::TopicType::Normal as i32,
            queue_count: 6,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
}

async fn send_all(client: &mut Messaging, sent: &mut Vec<String>, n: usize) {
    for _ in 0..n {
        let id = format!("m{}", sent.len());
        let r = client.send_message(send_request("orders", &id)).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32, "send {id}");
        sent.push(id);
    }
}

/// Every key and value of a store, but the fence a copy keeps for itself.
fn contents(store: &dyn Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let fence = txmq_broker::store::Key::Meta("repl-fence".into()).encode();
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let page = store.scan(start, Bound::Unbounded, 1000, false).unwrap();
        if page.is_empty() {
            return out;
        }
        after = page.last().map(|(k, _)| k.clone());
        out.extend(page.into_iter().filter(|(k, _)| *k != fence));
    }
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
    let tmp: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dirs: Vec<PathBuf> = tmp.iter().map(|d| d.path().to_path_buf()).collect();
    let free = txmq_broker::disk::DiskSpace::new(&dirs[1], 0).free().unwrap();
    assert!(free > 3 * GIB, "this test needs 3 GiB free on the temporary directory's disk; {free} bytes are");
    // Node 2's floor is 1 GiB under the free space; the other nodes check nothing.
    let mut nodes: Vec<Node> = IDS
        .iter()
        .zip(&dirs)
        .map(|(id, d)| start(&etcd.url, d, id, if *id == "n2" { free - GIB } else { 0 }))
        .collect();
    let n1 = nodes[0].addr.clone();
    wait_in_sync(&n1, Duration::from_secs(30)).await;
    create_orders(&n1).await;
    let mut client = Messaging::connect(format!("http://{n1}")).await.unwrap();
    let mut sent = Vec::new();
    send_all(&mut client, &mut sent, 30).await;
    wait_in_sync(&n1, Duration::from_secs(10)).await;

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
    wait_in_sync(&n1, Duration::from_secs(30)).await;
    let back = shards(&n1).await;
    assert!(n2_of(&back, "n1").unwrap().error.is_empty(), "the error is gone once the stream is open: {back:#?}");
    send_all(&mut client, &mut sent, 10).await;
    wait_in_sync(&n1, Duration::from_secs(10)).await;
    nodes.clear();
    assert_copies_equal(&dirs);
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
    let tmp: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dirs: Vec<PathBuf> = tmp.iter().map(|d| d.path().to_path_buf()).collect();
    // Node 2's copies, and only they, on a filesystem of their own: its own store stays on the
    // temporary directory's disk, and no floor is set.
    let mount = Mount::tmpfs(&dirs[1].join("replicas"), "64m");
    let mut nodes: Vec<Node> = IDS.iter().zip(&dirs).map(|(id, d)| start(&etcd.url, d, id, 0)).collect();
    let n1 = nodes[0].addr.clone();
    wait_in_sync(&n1, Duration::from_secs(30)).await;
    create_orders(&n1).await;
    let mut client = Messaging::connect(format!("http://{n1}")).await.unwrap();
    let mut sent = Vec::new();
    send_all(&mut client, &mut sent, 30).await;
    wait_in_sync(&n1, Duration::from_secs(10)).await;

    // The copies' filesystem filled up but for 1 MiB: their writes fail, and node 2 leaves the
    // in-sync sets of nodes 1 and 3, the status naming the failure. Sends go on.
    let avail = txmq_broker::disk::DiskSpace::new(&mount.0, 0).free().unwrap();
    let junk = mount.0.join("junk");
    let taken = Command::new("fallocate").arg("-l").arg((avail - (1 << 20)).to_string()).arg(&junk).status().unwrap();
    assert!(taken.success(), "fallocate on the tmpfs");
    wait_n2_out(&n1, &mut client, &mut sent, "No space left on device", Duration::from_secs(60)).await;

    // Space back: the copies are opened again and catch up, without a restart of node 2.
    std::fs::remove_file(&junk).unwrap();
    wait_in_sync(&n1, Duration::from_secs(30)).await;
    send_all(&mut client, &mut sent, 10).await;
    wait_in_sync(&n1, Duration::from_secs(10)).await;
    nodes.clear();
    assert_copies_equal(&dirs);
    drop(mount);
    drop(etcd);
}
