//! The official RocketMQ Node.js client (rocketmq-client-nodejs 1.0.8, installed by
//! tests/node/setup.sh from npm into target/node-client) against a three-node cluster (a real
//! etcd, brokers in this process): it sends, commits, rolls back and consumes through single
//! nodes, using only queue 0 of each broker name as that client does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../broker/tests/common/etcd.rs"]
mod etcd;

use std::time::Duration;
use txmq_proto::admin as pb;

/// The installed client's directory.
fn client_dir() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("bash").arg(format!("{root}/tests/node/setup.sh")).output().unwrap();
    assert!(out.status.success(), "setup.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sends_transacts_and_consumes_through_single_nodes_of_a_cluster() {
    let dir = client_dir();
    let etcd = etcd::Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut config = common::fast_config(d.path());
        config.etcd = Some(etcd.url.clone());
        config.node_id = Some(format!("n{}", i + 1));
        config.etcd_lease_ttl = Duration::from_secs(2);
        nodes.push(common::start(config).await);
    }
    let mut admin = common::admin(&nodes[0]).await;
    for _ in 0..50 {
        if admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner().nodes.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, ty) in [("node-spread", pb::TopicType::Normal), ("node-pay", pb::TopicType::Transaction)] {
        let r = admin
            .create_topic(pb::CreateTopicRequest { name: name.into(), r#type: ty as i32, queue_count: 6 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    }
    let script = format!("{}/tests/node/cluster.js", env!("CARGO_MANIFEST_DIR"));
    let (produce_at, consume_at) = (nodes[0].access_point(), nodes[1].access_point());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .arg(produce_at)
            .arg(consume_at)
            .env("NODE_PATH", format!("{dir}/node_modules"))
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stderr}");
    assert!(out.status.success() && stdout.trim_end().ends_with("ok"), "node scenario failed:\n{stdout}\n{stderr}");
    // Queue 0 of each broker name is on a different node: all three stored some.
    let d = admin.describe_topic(pb::DescribeTopicRequest { name: "node-spread".into() }).await.unwrap().into_inner();
    let mut owners: Vec<&str> =
        d.queues.iter().filter(|q| q.max_offset > q.min_offset).map(|q| q.owner.as_str()).collect();
    owners.dedup();
    assert_eq!(owners, ["n1", "n2", "n3"], "{d:?}");
    for n in nodes {
        n.stop().await.unwrap();
    }
}
