//! Cluster membership against a real etcd and broker child processes: nodes join and see each
//! other, a second process with a live node's id is refused, a data directory stays bound to
//! its node id, a SIGKILLed node leaves the member list when its lease expires and joins again
//! with a new epoch, and while etcd is stopped (SIGSTOP) the member list is an error, never a
//! false answer, until etcd resumes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{signal_pid, start_broker, Etcd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use txmq_proto::{admin as pb, v2};

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;
type Messaging = v2::messaging_service_client::MessagingServiceClient<tonic::transport::Channel>;

async fn status(addr: &str) -> pb::ClusterStatusResponse {
    let mut admin = Admin::connect(format!("http://{addr}")).await.unwrap();
    admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner()
}

fn node_args<'a>(etcd: &'a str, id: &'a str) -> Vec<&'a str> {
    vec!["--etcd", etcd, "--node-id", id, "--etcd-lease-ttl", "2s", "--metrics-listen", "off"]
}

/// Runs a broker that must refuse to start; returns its log. One still running after 30 s
/// started: it is killed and the test fails (rather than waiting for it forever).
fn refused(dir: &std::path::Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_txmq-broker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the broker started; its log: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the broker started");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Polls `cond` on node `addr`'s cluster status for up to `within`.
async fn wait_for(addr: &str, within: Duration, what: &str, cond: impl Fn(&pb::ClusterStatusResponse) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let s = status(addr).await;
        if cond(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}; last status {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A broker process killed when dropped (a failing test leaves none behind).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ids(s: &pb::ClusterStatusResponse) -> Vec<&str> {
    s.nodes.iter().map(|n| n.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_leave_and_are_never_falsely_listed() {
    let etcd = Etcd::start();
    let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (n1, a1, _l1) = start_broker(d1.path(), &node_args(&etcd.url, "n1"));
    let (n2, a2, _l2) = start_broker(d2.path(), &node_args(&etcd.url, "n2"));
    let (mut n1, mut n2) = (Reaped(n1), Reaped(n2));

    let s = status(&a1).await;
    assert_eq!(s.status.as_ref().unwrap().code, pb::StatusCode::Ok as i32);
    assert!(s.clustered && s.lease_healthy);
    assert_eq!(s.node_id, "n1");
    assert_eq!(ids(&s), ["n1", "n2"]);
    let addresses: Vec<&str> = s.nodes.iter().map(|n| n.address.as_str()).collect();
    assert_eq!(addresses, [a1.as_str(), a2.as_str()], "each node publishes the address it serves");
    let first_epoch = s.nodes[1].epoch;

    // Placement: a topic's queues spread over the nodes; a drained node gets no new ones.
    let mut admin = Admin::connect(format!("http://{a1}")).await.unwrap();
    let create = |name: &str, queues: u32| pb::CreateTopicRequest {
        name: name.into(),
        r#type: pb::TopicType::Normal as i32,
        queue_count: queues,
    };
    let ok_code = pb::StatusCode::Ok as i32;
    assert_eq!(admin.create_topic(create("spread", 4)).await.unwrap().into_inner().status.unwrap().code, ok_code);
    let drain = pb::DrainNodeRequest { node: "n2".into(), undo: false };
    assert_eq!(admin.drain_node(drain).await.unwrap().into_inner().status.unwrap().code, ok_code);
    assert_eq!(admin.create_topic(create("on-n1", 3)).await.unwrap().into_inner().status.unwrap().code, ok_code);
    let s = status(&a2).await;
    let shards = |topic: &str| -> Vec<(String, u32)> {
        let p = s.placements.iter().find(|p| p.topic == topic).unwrap();
        p.shards.iter().map(|x| (x.node.clone(), x.queues)).collect()
    };
    assert_eq!(shards("spread"), [("n1".to_string(), 2), ("n2".to_string(), 2)]);
    assert_eq!(shards("on-n1"), [("n1".to_string(), 3)], "nothing new on the drained node");
    let load: Vec<(bool, u32)> = s.nodes.iter().map(|n| (n.drained, n.owned_queues)).collect();
    assert_eq!(load, [(false, 5), (true, 2)]);
    let undo = pb::DrainNodeRequest { node: "n2".into(), undo: true };
    assert_eq!(admin.drain_node(undo).await.unwrap().into_inner().status.unwrap().code, ok_code);
    assert_eq!(admin.create_topic(create("least-loaded", 1)).await.unwrap().into_inner().status.unwrap().code, ok_code);
    let s = status(&a1).await;
    let p = s.placements.iter().find(|p| p.topic == "least-loaded").unwrap();
    assert_eq!(p.shards[0].node, "n2", "a new queue goes to the least-loaded node");

    // Scaling adds queues on the least-loaded nodes (n1 owns 5 queues, n2 3): existing ones stay.
    let scale = |queues: u32| pb::ScaleTopicRequest { name: "spread".into(), queue_count: queues };
    let r = admin.scale_topic(scale(8)).await.unwrap().into_inner();
    assert_eq!((r.status.unwrap().code, r.topic.unwrap().queue_count), (ok_code, 8));
    let r = admin.scale_topic(scale(6)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::InvalidArgument as i32, "a topic never shrinks");
    let s = status(&a2).await;
    let p = s.placements.iter().find(|p| p.topic == "spread").unwrap();
    let shards: Vec<(String, u32)> = p.shards.iter().map(|x| (x.node.clone(), x.queues)).collect();
    assert_eq!(shards, [("n1".to_string(), 3), ("n2".to_string(), 5)]);
    // Sends through node 1 reach both owners, which grow their shards; describe shows all 8.
    let mut c = Messaging::connect(format!("http://{a1}")).await.unwrap();
    for i in 0..10 {
        let r = c.send_message(common::send_request("spread", &format!("s-{i}"))).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    }
    let d = admin.describe_topic(pb::DescribeTopicRequest { name: "spread".into() }).await.unwrap().into_inner();
    let per_owner = |o: &str| d.queues.iter().filter(|q| q.owner == o).count();
    assert_eq!((d.queues.len(), per_owner("n1"), per_owner("n2"), d.message_count), (8, 3, 5, 10), "{d:?}");
    // Every node lists every placed topic with its whole queue count, shard or not.
    let mut admin2 = Admin::connect(format!("http://{a2}")).await.unwrap();
    let listed = admin2.list_topics(pb::ListTopicsRequest {}).await.unwrap().into_inner().topics;
    let listed: Vec<(String, u32)> = listed.into_iter().map(|t| (t.name, t.queue_count)).collect();
    let want = [("least-loaded", 1), ("on-n1", 3), ("spread", 8)];
    assert_eq!(listed, want.iter().map(|(n, q)| (n.to_string(), *q)).collect::<Vec<_>>());

    // A second process with a live node's id is refused, whatever its data directory.
    let log = refused(d3.path(), &node_args(&etcd.url, "n2"));
    assert!(log.contains("node id n2 is held by a live node"), "{log}");

    // SIGKILL: n2 leaves the list once its 2 s lease expires.
    signal_pid(n2.0.id(), "KILL");
    n2.0.wait().unwrap();
    wait_for(&a1, Duration::from_secs(8), "n2 gone", |s| ids(s) == ["n1"]).await;

    // Its data directory is n2's: another id is refused there; n2 itself joins again, with a
    // new epoch.
    let log = refused(d2.path(), &node_args(&etcd.url, "n9"));
    assert!(log.contains("the data directory belongs to node n2"), "{log}");
    let (n2_again, _a2, _l2) = start_broker(d2.path(), &node_args(&etcd.url, "n2"));
    n2 = Reaped(n2_again);
    wait_for(&a1, Duration::from_secs(5), "n2 back", |s| ids(s) == ["n1", "n2"]).await;
    let s = status(&a1).await;
    assert!(s.nodes[1].epoch > first_epoch, "a rejoin is a new epoch");

    // A topic placed while etcd is up.
    let mut c = Messaging::connect(format!("http://{a1}")).await.unwrap();
    let code = |r: v2::SendMessageResponse| r.status.unwrap().code;
    assert_eq!(
        code(c.send_message(common::send_request("orders", "m-1")).await.unwrap().into_inner()),
        v2::Code::Ok as i32
    );

    // etcd stopped: the member list is an error (never an empty or stale "OK"), and the lease
    // is reported unrenewed; sends to placed topics need no metadata and go on, while what
    // needs etcd (placing a new topic) fails clearly; once etcd resumes, so does the cluster.
    etcd.signal("STOP");
    assert_eq!(
        code(c.send_message(common::send_request("orders", "m-2")).await.unwrap().into_inner()),
        v2::Code::Ok as i32
    );
    let started = Instant::now();
    let r = c.send_message(common::send_request("fresh", "m-3")).await.unwrap().into_inner();
    let st = r.status.unwrap();
    assert_ne!(st.code, v2::Code::Ok as i32, "no false OK without etcd");
    assert!(st.message.contains("etcd"), "{st:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered within the etcd deadline");
    let mut admin = Admin::connect(format!("http://{a1}")).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), admin.cluster_status(pb::ClusterStatusRequest {}))
        .await
        .expect("the status answers within the etcd deadline")
        .unwrap()
        .into_inner();
    assert_eq!(s.status.unwrap().code, pb::StatusCode::Unavailable as i32);
    assert!(s.nodes.is_empty());
    etcd.signal("CONT");
    wait_for(&a1, Duration::from_secs(15), "etcd back", |s| {
        s.status.as_ref().is_some_and(|x| x.code == pb::StatusCode::Ok as i32) && s.lease_healthy && ids(s).len() == 2
    })
    .await;
    assert_eq!(
        code(c.send_message(common::send_request("fresh", "m-4")).await.unwrap().into_inner()),
        v2::Code::Ok as i32
    );

    for n in [&mut n1, &mut n2] {
        signal_pid(n.0.id(), "TERM");
        n.0.wait().unwrap();
    }
}
