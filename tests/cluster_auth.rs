//! A cluster with authentication (a real etcd, three brokers in this process): users and
//! policies live in etcd, so a user made on one node signs in on every node and a deleted one
//! is refused everywhere; requests a node passes on are checked by the owner against the
//! original client's signature and policy; a request claiming to come from a node without the
//! cluster key's signature is refused; with TLS required, nodes forward over TLS. And the
//! CLI's listings (`status`, `group list`, `msg find`, `dlq list/resend`) answer for the whole
//! cluster from any node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../broker/tests/common/etcd.rs"]
mod etcd;

use rocketmq::conf::ProducerOption;
use rocketmq::model::message::MessageBuilder;
use std::time::{Duration, Instant};
use tonic::Request;
use txmq_broker::cluster::peer::NodeKey;
use txmq_broker::server::RunningBroker;
use txmq_client::{ClientConfig, Credentials, Message, SimpleConsumer};
use txmq_proto::admin as pb;
use txmq_proto::v2;

const ROOT: &str = "root";
const ROOT_SECRET: &str = "root-secret-cl-7c1d";
const KEY: &[u8] = b"cluster-key-0123456789abcdef-test";

struct Cluster {
    _etcd: etcd::Etcd,
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<RunningBroker>,
    _key_dir: tempfile::TempDir,
}

/// Three nodes with `--auth`, the first super user `root`, the cluster key, and TLS (required,
/// peers trusting the test CA) when `certs` is given.
async fn cluster(certs: Option<&common::TestCerts>) -> Cluster {
    std::env::set_var("TXMQ_AUTH_INIT_SECRET", ROOT_SECRET);
    let etcd = etcd::Etcd::start();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut c = common::fast_config(d.path());
        c.etcd = Some(etcd.url.clone());
        c.node_id = Some(format!("n{}", i + 1));
        c.etcd_lease_ttl = Duration::from_secs(2);
        c.auth = true;
        c.auth_init_user = Some(ROOT.into());
        c.cluster_key_file = Some(key_file.clone());
        // One delivery: an unacked message is a dead letter as soon as its invisibility ends.
        c.max_delivery_attempts = 1;
        if let Some(certs) = certs {
            c.tls_cert = Some(certs.cert.clone());
            c.tls_key = Some(certs.key.clone());
            c.tls_mode = txmq_broker::tls::TlsMode::Required;
            c.tls_peer_ca = Some(certs.ca.clone());
        }
        nodes.push(common::start(c).await);
    }
    let ca = certs.map(|c| c.ca.clone());
    let mut admin = common::admin_over(&nodes[0], Some(root()), ca).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner().nodes.len() < 3 {
        assert!(Instant::now() < deadline, "three members within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Cluster { _etcd: etcd, _dirs: dirs, nodes, _key_dir: key_dir }
}

fn root() -> Credentials {
    Credentials::new(ROOT, ROOT_SECRET)
}

fn ok(s: Option<pb::Status>) {
    let s = s.unwrap();
    assert_eq!(s.code, pb::StatusCode::Ok as i32, "{}", s.message);
}

async fn create_topic(admin: &mut common::Admin, name: &str, queues: u32) {
    let r = pb::CreateTopicRequest { name: name.into(), r#type: pb::TopicType::Normal as i32, queue_count: queues };
    ok(admin.create_topic(r).await.unwrap().into_inner().status);
}

/// Messages of `topic` per owner, from the cluster-wide describe.
async fn per_owner(admin: &mut common::Admin, topic: &str) -> std::collections::BTreeMap<String, u64> {
    let r = admin.describe_topic(pb::DescribeTopicRequest { name: topic.into() }).await.unwrap().into_inner();
    ok(r.status);
    let mut per = std::collections::BTreeMap::new();
    for q in r.queues {
        *per.entry(q.owner).or_default() += q.max_offset - q.min_offset;
    }
    per
}

/// A SendMessage request for `topic` signed as root, marked as forwarded by node `by`.
fn forged(topic: &str, by: &str) -> Request<v2::SendMessageRequest> {
    let mut req = Request::new(common_send(topic, "forged"));
    root().sign(req.metadata_mut()).unwrap();
    req.metadata_mut().insert("x-mq-client-id", "forger".parse().unwrap());
    req.metadata_mut().insert("x-txmq-forwarded-by", by.parse().unwrap());
    req
}

fn common_send(topic: &str, body: &str) -> v2::SendMessageRequest {
    let res = |name: &str| Some(v2::Resource { resource_namespace: String::new(), name: name.into() });
    v2::SendMessageRequest {
        messages: vec![v2::Message {
            topic: res(topic),
            user_properties: Default::default(),
            system_properties: Some(v2::SystemProperties {
                message_id: format!("forged-{}", std::process::id()),
                body_encoding: v2::Encoding::Identity as i32,
                message_type: v2::MessageType::Normal as i32,
                ..Default::default()
            }),
            body: body.as_bytes().to_vec(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_the_clusters_and_only_nodes_may_forward() {
    let c = cluster(None).await;
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let mut admin1 = common::admin_over(n1, Some(root()), None).await;
    let mut admin2 = common::admin_over(n2, Some(root()), None).await;
    let mut admin3 = common::admin_over(n3, Some(root()), None).await;
    create_topic(&mut admin1, "orders", 6).await;
    create_topic(&mut admin1, "payments", 3).await;

    // A user made on node 1, granted on node 2 (etcd compare-and-swap from another node).
    let r = admin1
        .create_user(pb::CreateUserRequest {
            name: "app".into(),
            secret: "app-secret-123".into(),
            r#type: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    for (resource, actions) in [("Topic:orders", "Pub,Sub"), ("Group:ledger", "Sub")] {
        let entry =
            pb::AclEntry { resource: resource.into(), actions: actions.into(), allow: true, sources: Vec::new() };
        let r = admin2.grant_acl(pb::GrantAclRequest { user: "app".into(), entry: Some(entry) }).await.unwrap();
        ok(r.into_inner().status);
    }
    // Every node follows etcd: each knows the user and both grants within moments (node 1
    // made the user but learns node 2's grants from etcd too, and an owner checks the policy
    // of a forwarded send itself).
    let deadline = Instant::now() + Duration::from_secs(3);
    for (node, admin) in [(1, &mut admin1), (2, &mut admin2), (3, &mut admin3)] {
        loop {
            let users = admin.list_users(pb::ListUsersRequest {}).await.unwrap().into_inner().users;
            if users.iter().any(|u| u.name == "app" && u.policy.len() == 2) {
                break;
            }
            assert!(Instant::now() < deadline, "node {node} does not know app and its grants: {users:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The official Rust client signing as app, given node 3 only: every send is forwarded to
    // its owner, which checks app's signature and policy itself.
    let mut o = common::client_option(n3);
    o.set_access_key("app");
    o.set_secret_key("app-secret-123");
    let mut opt = ProducerOption::default();
    opt.set_logging_format(common::quiet_logs());
    opt.set_topics(vec!["orders"]);
    let mut p = rocketmq::Producer::new(opt, o).unwrap();
    p.start().await.expect("app signs in at node 3");
    for i in 0..30 {
        let m = MessageBuilder::builder().set_topic("orders").set_body(format!("o-{i}").into_bytes()).build().unwrap();
        p.send(m).await.expect("allowed on every owner");
    }
    let per = per_owner(&mut admin1, "orders").await;
    assert_eq!(per.len(), 3, "every node stores some: {per:?}");
    assert_eq!(per.values().sum::<u64>(), 30);
    // Not granted on payments: refused wherever the owner is.
    let sdk = |at: &RunningBroker| ClientConfig::new(at.access_point()).with_credentials("app", "app-secret-123");
    let sp = txmq_client::Producer::connect(sdk(n1), &["orders"]).await.unwrap();
    for _ in 0..3 {
        let e = sp.send(Message::new("payments", b"x".to_vec())).await.unwrap_err();
        assert!(e.to_string().contains("FORBIDDEN"), "{e}");
    }
    let consumer = SimpleConsumer::connect(sdk(n2), "ledger").await.unwrap();
    let mut got = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 30 && Instant::now() < deadline {
        for m in consumer
            .receive_for("orders", "*", 32, Duration::from_secs(30), Duration::from_millis(500))
            .await
            .unwrap_or_default()
        {
            consumer.ack(&m).await.unwrap();
            got.insert(String::from_utf8(m.body).unwrap());
        }
    }
    assert_eq!(got.len(), 30, "app consumes every message through node 2");

    // Requests claiming to come from a node: refused without the cluster key's signature.
    let stored = per_owner(&mut admin1, "orders").await.values().sum::<u64>();
    let mut raw =
        v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", n2.access_point()))
            .await
            .unwrap();
    let e = raw.send_message(forged("orders", "n1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut wrong_key = forged("orders", "n1");
    let sig = NodeKey::from_bytes(b"another-key-0123456789").unwrap().sign("n1", now_ms(), "", "");
    wrong_key.metadata_mut().insert("x-txmq-node-auth", sig.parse().unwrap());
    let e = raw.send_message(wrong_key).await.unwrap_err();
    assert!(e.message().contains("wrong node signature"), "{e:?}");
    let mut stale = forged("orders", "n1");
    let sig = NodeKey::from_bytes(KEY).unwrap().sign("n1", now_ms() - 3_600_000, "", "");
    stale.metadata_mut().insert("x-txmq-node-auth", sig.parse().unwrap());
    assert_eq!(raw.send_message(stale).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut cluster_api =
        txmq_proto::cluster::cluster_client::ClusterClient::connect(format!("http://{}", n2.access_point()))
            .await
            .unwrap();
    let push =
        txmq_proto::cluster::PushCheckRequest { topic: "orders".into(), originator: "x".into(), command: vec![] };
    assert_eq!(cluster_api.push_check(push).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(per_owner(&mut admin1, "orders").await.values().sum::<u64>(), stored, "nothing forged was stored");
    // The control: with the key's signature the same request is served as forwarded.
    let mut signed = forged("orders", "n1");
    let sig = NodeKey::from_bytes(KEY).unwrap().sign("n1", now_ms(), "", "");
    signed.metadata_mut().insert("x-txmq-node-auth", sig.parse().unwrap());
    let r = raw.send_message(signed).await.expect("a node's request").into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);

    // Refused sends and receives to topics that do not exist create none, on any node: not
    // for a caller who signs nothing, nor for app, who may not use them.
    let unsigned = raw.send_message(common_send("junk-anon", "x")).await.unwrap().into_inner();
    assert_eq!(unsigned.status.unwrap().code, v2::Code::Unauthorized as i32);
    let e = sp.send(Message::new("junk-app", b"x".to_vec())).await.unwrap_err();
    assert!(e.to_string().contains("FORBIDDEN"), "{e}");
    let receive = |topic: &str| v2::ReceiveMessageRequest {
        group: Some(v2::Resource { resource_namespace: String::new(), name: "ledger".into() }),
        message_queue: Some(v2::MessageQueue {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = raw.receive_message(receive("junk-recv")).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.content,
        Some(v2::receive_message_response::Content::Status(s)) if s.code == v2::Code::Unauthorized as i32
    ));
    for admin in [&mut admin1, &mut admin2, &mut admin3] {
        let topics = admin.list_topics(pb::ListTopicsRequest {}).await.unwrap().into_inner().topics;
        let junk: Vec<_> = topics.iter().filter(|t| t.name.starts_with("junk-")).map(|t| &t.name).collect();
        assert!(junk.is_empty(), "refused requests created topics: {junk:?}");
    }

    // Deleted on node 3: refused through node 1 within moments (node 1 follows etcd).
    let r = admin3.delete_user(pb::DeleteUserRequest { name: "app".into() }).await.unwrap().into_inner();
    ok(r.status);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sp.send(Message::new("orders", b"after delete".to_vec())).await {
            Err(e) if e.to_string().contains("UNAUTHORIZED") => break,
            other => assert!(Instant::now() < deadline, "still accepted 5 s after deletion: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(p);
    for n in c.nodes {
        n.stop().await.unwrap();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_required_nodes_forward_over_tls() {
    let certs = common::TestCerts::new("cluster");
    let c = cluster(Some(&certs)).await;
    let mut admin = common::admin_over(&c.nodes[0], Some(root()), Some(certs.ca.clone())).await;
    create_topic(&mut admin, "events", 6).await;
    let config = ClientConfig::new(c.nodes[0].access_point())
        .with_credentials(ROOT, ROOT_SECRET)
        .with_tls(Some(certs.ca.clone()));
    let p = txmq_client::Producer::connect(config, &["events"]).await.unwrap();
    for i in 0..24 {
        p.send(Message::new("events", format!("e-{i}").into_bytes())).await.expect("forwarded over TLS");
    }
    let per = per_owner(&mut admin, "events").await;
    assert_eq!(per.len(), 3, "every node stores some: {per:?}");
    assert_eq!(per.values().sum::<u64>(), 24);
    for n in c.nodes {
        n.stop().await.unwrap();
    }
}

/// `txmq --json ARGS…` at `broker`, signing as root; the parsed output.
async fn cli(broker: &RunningBroker, args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_txmq"));
    cmd.arg("--broker").arg(broker.access_point()).arg("--json").args(args);
    cmd.env("TXMQ_ACCESS_KEY", ROOT).env("TXMQ_SECRET_KEY", ROOT_SECRET);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "txmq {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("txmq {args:?} printed invalid JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_answers_for_the_whole_cluster() {
    let c = cluster(None).await;
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let mut admin = common::admin_over(n1, Some(root()), None).await;
    create_topic(&mut admin, "jobs", 6).await;
    let config = |at: &RunningBroker| ClientConfig::new(at.access_point()).with_credentials(ROOT, ROOT_SECRET);
    let p = txmq_client::Producer::connect(config(n1), &["jobs"]).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(p.send(Message::new("jobs", format!("j-{i}").into_bytes())).await.unwrap().message_id);
    }
    let per = per_owner(&mut admin, "jobs").await;
    assert_eq!(per.len(), 3, "{per:?}");

    // Group "workers" takes every message and acks none: with one delivery allowed, each
    // becomes a dead letter on the node that stores it once its 1 s invisibility ends.
    let consumer = SimpleConsumer::connect(config(n2), "workers").await.unwrap();
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while taken < 12 && Instant::now() < deadline {
        taken += consumer
            .receive_for("jobs", "*", 32, Duration::from_secs(1), Duration::from_millis(300))
            .await
            .unwrap_or_default()
            .len();
    }
    assert_eq!(taken, 12);
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = consumer.receive_for("jobs", "*", 32, Duration::from_secs(1), Duration::from_millis(100)).await;
        let dead = cli(n3, &["dlq", "list", "workers"]).await;
        if dead.as_array().unwrap().len() == 12 || Instant::now() > deadline {
            break dead;
        }
    };
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 12, "every node's dead letters, listed through node 3: {dead:?}");
    let nodes: std::collections::BTreeSet<&str> = dead.iter().map(|m| m["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.len(), 3, "each names the node storing it: {nodes:?}");

    // `msg show` by id through node 2 finds messages wherever they are stored.
    let mut found_on = std::collections::BTreeSet::new();
    for id in &ids {
        let found = cli(n2, &["msg", "show", id, "--topic", "jobs"]).await;
        let found = found.as_array().unwrap();
        assert_eq!(found.len(), 1, "{id}: {found:?}");
        assert_eq!(found[0]["message_id"], id.as_str());
        found_on.insert(found[0]["node"].as_str().unwrap().to_string());
    }
    assert_eq!(found_on.len(), 3);

    // `group list` through node 1: the group once, its dead letters summed over the nodes.
    let groups = cli(n1, &["group", "list"]).await;
    let workers: Vec<_> = groups.as_array().unwrap().iter().filter(|g| g["name"] == "workers").collect();
    assert_eq!(workers.len(), 1, "{groups}");
    assert_eq!(workers[0]["dead_letters"], 12, "{groups}");

    // `status` through node 3: every node, and the cluster's totals.
    let status = cli(n3, &["status"]).await;
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{status}");
    let stored: u64 = nodes.iter().map(|n| n["messages"].as_u64().unwrap()).sum();
    assert_eq!(status["messages"].as_u64().unwrap(), stored, "{status}");
    assert!(stored >= 24, "12 messages and their 12 dead letters: {status}");
    assert_eq!(status["store_writable"], true);

    // `dlq resend --all` through node 2: each node resends its own; the group gets all 12 again.
    let resent = cli(n2, &["dlq", "resend", "workers", "--all"]).await;
    assert_eq!(resent["resent"], 12, "{resent}");
    let mut again = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.len() < 12 && Instant::now() < deadline {
        for m in consumer
            .receive_for("jobs", "*", 32, Duration::from_secs(30), Duration::from_millis(300))
            .await
            .unwrap_or_default()
        {
            consumer.ack(&m).await.unwrap();
            again.insert(m.message_id);
        }
    }
    assert_eq!(again.len(), 12, "every resent message is delivered again");
    for n in c.nodes {
        n.stop().await.unwrap();
    }
}
