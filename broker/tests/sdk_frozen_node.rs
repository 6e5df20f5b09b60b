//! The txmq SDK given every node of a three-node cluster (a real etcd, broker processes) while
//! one node is frozen with SIGSTOP, as a hung machine would be: its socket stays open, so only
//! the SDK's pings tell it apart from a slow node. Transactions go on through the other nodes,
//! at most the calls in flight to the frozen node fail, and none waits out its deadline. A
//! consumer given every node receives meanwhile what the others hold; once the node is thawed,
//! every committed message is consumed once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{signal_pid, start_broker, Etcd};
use std::collections::HashSet;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_client::{ClientConfig, Message, SimpleConsumer, TransactionProducer};
use txmq_proto::admin as pb;

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

struct Commit;

#[async_trait::async_trait]
impl txmq_client::TransactionChecker for Commit {
    async fn check(&self, _request: &txmq_client::CheckRequest) -> txmq_client::Resolution {
        txmq_client::Resolution::Commit
    }
}

/// Broker processes, killed when the test ends (a frozen one is thawed first).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = std::process::Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn members(addr: &str) -> usize {
    let mut admin = Admin::connect(format!("http://{addr}")).await.unwrap();
    admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner().nodes.len()
}

/// Waits until node `addr` counts `n` members.
async fn wait_members(addr: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while members(addr).await != n {
        assert!(Instant::now() < deadline, "{addr} never counted {n} members");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Begins and commits `n` transactions; returns the bodies of those that began, and how many
/// calls failed. A commit that fails is decided by the check-back (the checker commits), so
/// its message is delivered all the same.
async fn transactions(p: &TransactionProducer, prefix: &str, n: usize) -> (Vec<String>, usize) {
    let (mut began, mut failed) = (Vec::new(), 0);
    for i in 0..n {
        let body = format!("{prefix}-{i}");
        match p.begin(Message::new("orders", body.clone())).await {
            Ok(t) => {
                if t.commit().await.is_err() {
                    failed += 1;
                }
                began.push(body);
            }
            Err(_) => failed += 1,
        }
    }
    (began, failed)
}

/// One receive of up to 32 messages; acks them and adds their bodies to `got`.
async fn receive(c: &SimpleConsumer, got: &mut HashSet<String>) {
    for m in
        c.receive_for("orders", "*", 32, Duration::from_secs(30), Duration::from_millis(500)).await.unwrap_or_default()
    {
        c.ack(&m).await.unwrap();
        assert!(got.insert(String::from_utf8(m.body).unwrap()), "a message delivered twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_leaves_a_frozen_node_out_and_loses_nothing() {
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, mut addresses, mut logs) = (Nodes(Vec::new()), Vec::new(), Vec::new());
    for (i, d) in dirs.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let args = ["--etcd", &etcd.url, "--node-id", &id, "--etcd-lease-ttl", "2s", "--metrics-listen", "off"];
        let args = [&args[..], &["--long-polling-max", "1s", "--txn-check-interval", "1s", "--txn-timeout", "1s"]];
        let (child, addr, log) = start_broker(d.path(), &args.concat());
        nodes.0.push(child);
        addresses.push(addr);
        logs.push(log);
    }
    wait_members(&addresses[0], 3).await;
    let mut admin = Admin::connect(format!("http://{}", addresses[0])).await.unwrap();
    let req =
        pb::CreateTopicRequest { name: "orders".into(), r#type: pb::TopicType::Transaction as i32, queue_count: 6 };
    assert_eq!(admin.create_topic(req).await.unwrap().into_inner().status.unwrap().code, pb::StatusCode::Ok as i32);

    // Two producers given every node: one with its calls on one stream (the default), one with
    // a unary call each, which takes the nodes in turn call by call.
    let all = addresses.join(",");
    let mut unary = ClientConfig::new(all.clone());
    unary.stream_calls = false;
    let mut producers = Vec::new();
    for config in [ClientConfig::new(all.clone()), unary] {
        producers.push(TransactionProducer::connect(config, &["orders"], Arc::new(Commit)).await.unwrap());
    }
    let mut committed = HashSet::new();
    for (k, p) in producers.iter().enumerate() {
        let (began, failed) = transactions(p, &format!("before-{k}"), 15).await;
        assert_eq!(failed, 0, "with every node up");
        committed.extend(began);
    }

    // Node 3 freezes. Once the others have seen its lease end, they no longer place messages
    // on it; the SDK still holds an open connection to it.
    signal_pid(nodes.0[2].id(), "STOP");
    wait_members(&addresses[0], 2).await;
    for (k, p) in producers.iter().enumerate() {
        let started = Instant::now();
        let (began, failed) = transactions(p, &format!("frozen-{k}"), 30).await;
        let took = started.elapsed();
        // A call waiting out its 3 s deadline on the frozen node, each time the node's turn
        // came, would fail ten of the unary producer's calls and take over 30 s.
        assert!(failed <= 1, "producer {k}: {failed} calls failed while node 3 was frozen");
        assert!(took < Duration::from_secs(10), "producer {k}: 30 transactions took {took:?}");
        committed.extend(began);
    }

    // Consumption goes on meanwhile: a consumer given every node receives each message sent
    // while node 3 was frozen (the others hold them) before it is thawed.
    let c = SimpleConsumer::connect(ClientConfig::new(all), "ledger").await.unwrap();
    let mut got = HashSet::new();
    let sent_frozen: HashSet<String> = committed.iter().filter(|b| b.starts_with("frozen-")).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent_frozen.is_subset(&got) {
        let missing: Vec<&String> = sent_frozen.difference(&got).collect();
        assert!(Instant::now() < deadline, "not received while node 3 was frozen: {missing:?}");
        receive(&c, &mut got).await;
    }

    // Thawed: it rejoins, and every committed message, its own too, is consumed once.
    signal_pid(nodes.0[2].id(), "CONT");
    wait_members(&addresses[0], 3).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < committed.len() && Instant::now() < deadline {
        receive(&c, &mut got).await;
    }
    assert_eq!(got, committed, "every committed message once");
    drop(nodes);
    for log in logs {
        let _ = log.join();
    }
}
