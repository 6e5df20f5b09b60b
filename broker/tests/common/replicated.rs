//! A cluster of broker processes with `--replicas 3 --min-insync-replicas 2` on a real etcd:
//! starting a node, the shards' status, and a store's contents to compare copies with.

use super::start_broker;
use std::ops::Bound;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_broker::store::Store;
use txmq_proto::admin as pb;

/// The node ids of a three-node cluster.
pub const IDS: [&str; 3] = ["n1", "n2", "n3"];

/// Tests of a binary that start etcd and three brokers (on two cores, with a 2 s lease) run
/// one at a time: a node stalled past its lease by a neighbour's load would be taken over for
/// real.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;
pub type Messaging = txmq_proto::v2::messaging_service_client::MessagingServiceClient<tonic::transport::Channel>;

/// A broker process, killed when dropped.
pub struct Node {
    pub child: Child,
    pub addr: String,
    /// Its log after the line with its address, once it has exited.
    pub log: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node `id` on data directory `dir`: three copies of each store, two in sync for a write, a
/// follower late by 1 s left out; `extra` flags added.
pub fn start(etcd: &str, dir: &std::path::Path, id: &str, extra: &[&str]) -> Node {
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    let (child, addr, log) = start_broker(dir, &args);
    Node { child, addr, log: Some(log) }
}

pub async fn admin(addr: &str) -> Admin {
    Admin::connect(format!("http://{addr}")).await.unwrap()
}

/// Creates `orders`, a normal topic of 6 queues (two per shard), through `addr`.
pub async fn create_orders(addr: &str) {
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

/// Every shard as `txmq cluster status` shows it, asked of `addr`.
pub async fn shards(addr: &str) -> Vec<pb::ShardStatus> {
    let r = admin(addr).await.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    r.shards
}

/// Waits until every shard named is led by its own node, both its followers connected and in
/// sync with lag 0.
pub async fn wait_in_sync(addr: &str, names: &[&str], within: Duration) -> Vec<pb::ShardStatus> {
    wait_shards(addr, within, &format!("shards {names:?} in sync"), |s| {
        names.iter().all(|n| {
            s.iter().any(|sh| {
                sh.shard == *n
                    && sh.leader == *n
                    && sh.replicas.len() == 2
                    && sh.replicas.iter().all(|r| r.in_sync && r.connected && r.lag == 0)
            })
        })
    })
    .await
}

/// Polls the shards' status through `addr` until `done` holds (failing the test after
/// `within`, saying `what` it waited for); that status.
pub async fn wait_shards(
    addr: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&[pb::ShardStatus]) -> bool,
) -> Vec<pb::ShardStatus> {
    let deadline = Instant::now() + within;
    loop {
        let s = shards(addr).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "not {what} within {within:?}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Receives `orders` as group `audit` through `client` until every id of `want` came, for up
/// to `within`; the ids that did not.
pub async fn missing_after_receiving<'a>(
    client: &mut Messaging,
    want: impl IntoIterator<Item = &'a String>,
    within: Duration,
) -> Vec<String> {
    use txmq_proto::v2::receive_message_response::Content;
    let want: std::collections::BTreeSet<&String> = want.into_iter().collect();
    let mut got = std::collections::HashSet::new();
    let deadline = Instant::now() + within;
    while !want.iter().all(|id| got.contains(*id)) && Instant::now() < deadline {
        let mut stream =
            client.receive_message(super::receive_request("audit", "orders", 60)).await.unwrap().into_inner();
        while let Some(item) = stream.message().await.unwrap() {
            if let Some(Content::Message(m)) = item.content {
                got.insert(m.system_properties.unwrap().message_id);
            }
        }
    }
    want.into_iter().filter(|id| !got.contains(*id)).cloned().collect()
}

/// What the sends made while `stop` was unset answered: the ids acknowledged, and how many
/// answered each other code.
#[derive(Default)]
pub struct Sends {
    pub acked: Vec<String>,
    pub refused: std::collections::BTreeMap<i32, u32>,
    pub first_refusal: Option<String>,
}

/// Sends one message at a time to `orders` through `client` until `stop`, ids `prefix0`,
/// `prefix1` …, counting the acknowledged ones in `acked` as they come. A transport error
/// fails the test: a refused connection means the node stopped serving.
async fn send_until(mut client: Messaging, prefix: String, stop: Arc<AtomicBool>, acked: Arc<AtomicUsize>) -> Sends {
    let mut out = Sends::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("{prefix}{i}");
        i += 1;
        let mut req = tonic::Request::new(super::send_request("orders", &id));
        req.set_timeout(Duration::from_secs(15));
        let st = match client.send_message(req).await {
            Ok(r) => r.into_inner().status.unwrap(),
            Err(s) => panic!("send {id}: transport error {s:?} (the broker must answer a RocketMQ status)"),
        };
        if st.code == txmq_proto::v2::Code::Ok as i32 {
            out.acked.push(id);
            acked.fetch_add(1, Ordering::Relaxed);
        } else {
            *out.refused.entry(st.code).or_default() += 1;
            out.first_refusal.get_or_insert(format!("{id}: {} {}", st.code, st.message));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Senders writing to `orders` one message at a time each (see [`send_until`]), until
/// finished.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Sends acknowledged so far, by every sender.
    pub acked: Arc<AtomicUsize>,
    senders: Vec<tokio::task::JoinHandle<Sends>>,
}

impl Load {
    /// `n` senders through `addr`, sender `s` sending ids `{prefix}{s}-0`, `{prefix}{s}-1` …
    pub async fn start(addr: &str, n: usize, prefix: &str) -> Load {
        let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let client = Messaging::connect(format!("http://{addr}")).await.unwrap();
        let senders = (0..n)
            .map(|s| tokio::spawn(send_until(client.clone(), format!("{prefix}{s}-"), stop.clone(), acked.clone())))
            .collect();
        Load { stop, acked, senders }
    }

    /// Stops the senders; what their sends answered, all senders together.
    pub async fn finish(self) -> Sends {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Sends::default();
        for s in self.senders {
            let one = s.await.unwrap();
            all.acked.extend(one.acked);
            for (code, n) in one.refused {
                *all.refused.entry(code).or_default() += n;
            }
            all.first_refusal = all.first_refusal.or(one.first_refusal);
        }
        all
    }
}

/// etcd and nodes [`IDS`] on their own data directories, every shard in sync, `orders` created.
pub async fn three_nodes() -> (super::Etcd, Vec<tempfile::TempDir>, Vec<Node>) {
    let etcd = super::Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Node> = IDS.iter().zip(&dirs).map(|(id, d)| start(&etcd.url, d.path(), id, &[])).collect();
    wait_in_sync(&nodes[0].addr, &IDS, Duration::from_secs(30)).await;
    create_orders(&nodes[0].addr).await;
    (etcd, dirs, nodes)
}

/// Every key and value of a store, but the fence a copy keeps for itself (the highest leader
/// epoch that fed it).
pub fn contents(store: &dyn Store) -> Vec<(Vec<u8>, Vec<u8>)> {
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
