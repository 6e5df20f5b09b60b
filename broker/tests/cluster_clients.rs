//! The official Python (rocketmq-python-client 5.1.2) and Node.js (rocketmq-client-nodejs
//! 1.0.8) clients against three broker processes and a real etcd, each client given single
//! nodes: producers and transactional producers on node 1, consumers on node 2. Python sends
//! EndTransaction to the receipt's endpoint; Node sends only to queue 0 of each broker name.
//! The clients are installed by tests/python/setup.sh and tests/node/setup.sh (which `.ci/run`
//! runs; these tests run them too when needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{start_broker, Etcd};
use std::process::{Child, Command};
use std::time::Duration;
use txmq_proto::admin as pb;

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// The workspace root (the clients' scripts live under its `tests/`).
fn root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a setup script; returns what it printed (a path).
fn setup(script: &str) -> String {
    let out = Command::new("bash").arg(format!("{}/tests/{script}", root())).output().unwrap();
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Cluster {
    _etcd: Etcd,
    nodes: Vec<(Child, String)>,
    logs: Vec<std::thread::JoinHandle<Vec<String>>>,
    metrics: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three nodes, node 1 with a metrics endpoint, and `topics` placed over them (9 queues each).
async fn cluster(topics: &[(&str, pb::TopicType)]) -> Cluster {
    let etcd = Etcd::start();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, mut logs) = (Vec::new(), Vec::new());
    for (i, d) in dirs.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let metrics_at = if i == 0 { metrics.as_str() } else { "off" };
        let args = ["--etcd", &etcd.url, "--node-id", &id, "--etcd-lease-ttl", "2s", "--long-polling-max", "1s"];
        let (child, addr, log) = start_broker(d.path(), &[&args[..], &["--metrics-listen", metrics_at]].concat());
        nodes.push((child, addr));
        logs.push(log);
    }
    let mut admin = Admin::connect(format!("http://{}", nodes[0].1)).await.unwrap();
    for _ in 0..50 {
        if admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner().nodes.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, ty) in topics {
        let req = pb::CreateTopicRequest { name: name.to_string(), r#type: *ty as i32, queue_count: 9 };
        let r = admin.create_topic(req).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    }
    Cluster { _etcd: etcd, nodes, logs, metrics, _dirs: dirs }
}

impl Cluster {
    /// Runs `command` to its end off the async runtime and asserts it printed "ok"; when it did
    /// not, stops the nodes and fails with the client's output and each node's log.
    async fn run_ok(&mut self, what: &str, mut command: Command) {
        let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() && stdout.trim_end().ends_with("ok") {
            return;
        }
        let mut logs = String::new();
        for (i, ((child, _), log)) in self.nodes.iter_mut().zip(self.logs.drain(..)).enumerate() {
            let _ = child.kill();
            let _ = child.wait();
            logs += &format!("--- n{} ---\n{}\n", i + 1, log.join().unwrap_or_default().join("\n"));
        }
        panic!("{what} failed:\n{stdout}\n{stderr}\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sends_transacts_and_consumes_through_single_nodes() {
    let python = setup("python/setup.sh");
    let mut c = cluster(&[("py-spread", pb::TopicType::Normal), ("py-pay", pb::TopicType::Transaction)]).await;
    let mut command = Command::new(python);
    command
        .arg(format!("{}/tests/python/e2e.py", root()))
        .arg(&c.nodes[0].1)
        .arg("cluster")
        .env("PY_CONSUME_AT", &c.nodes[1].1);
    c.run_ok("the Python cluster scenario", command).await;
    // Node 1 passed sends to the others, and says so in its node-labelled metrics.
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&c.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    for to in ["n2", "n3"] {
        let series = format!("txmq_cluster_forwards_total{{node=\"n1\",rpc=\"SendMessage\",to=\"{to}\"}} ");
        assert!(metrics.lines().any(|l| l.starts_with(&series)), "no {series} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sends_transacts_and_consumes_through_single_nodes() {
    let dir = setup("node/setup.sh");
    let mut c = cluster(&[("node-spread", pb::TopicType::Normal), ("node-pay", pb::TopicType::Transaction)]).await;
    let mut command = Command::new("node");
    command
        .arg(format!("{}/tests/node/cluster.js", root()))
        .arg(&c.nodes[0].1)
        .arg(&c.nodes[1].1)
        .env("NODE_PATH", format!("{dir}/node_modules"));
    c.run_ok("the Node.js cluster scenario", command).await;
    // Queue 0 of each broker name is on a different node: all three stored some.
    let mut admin = Admin::connect(format!("http://{}", c.nodes[0].1)).await.unwrap();
    let d = admin.describe_topic(pb::DescribeTopicRequest { name: "node-spread".into() }).await.unwrap().into_inner();
    let mut owners: Vec<&str> =
        d.queues.iter().filter(|q| q.max_offset > q.min_offset).map(|q| q.owner.as_str()).collect();
    owners.dedup();
    assert_eq!(owners, ["n1", "n2", "n3"], "{d:?}");
}
