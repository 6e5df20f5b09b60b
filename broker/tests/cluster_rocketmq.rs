//! Three broker processes coordinated by a real etcd, driven by the official Apache RocketMQ
//! Rust client (5.0.0) through single nodes: a producer given node 1's address spreads a
//! 12-queue topic's messages over all three nodes; a consumer group given node 2's address
//! receives each exactly once; a FIFO message group stays in order across nodes. A node killed
//! is skipped, and one frozen (SIGSTOP) while its lease still lists it is found out by the
//! nodes' pings and left out until it answers again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{signal_pid, start_broker, Etcd};
use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageBuilder;
use rocketmq::{Producer, SimpleConsumer};
use std::collections::HashSet;
use std::process::Child;
use std::time::{Duration, Instant};
use txmq_proto::admin as pb;
use txmq_proto::v2;

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

struct Node {
    child: Child,
    addr: String,
    _dir: Option<tempfile::TempDir>,
    _log: std::thread::JoinHandle<Vec<String>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(etcd: &str, id: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut n = start_node_at(dir.path(), etcd, id, "1s");
    n._dir = Some(dir);
    n
}

/// A node on data directory `dir` whose transactions are first checked after `txn_timeout`.
fn start_node_at(dir: &std::path::Path, etcd: &str, id: &str, txn_timeout: &str) -> Node {
    start_node_leased(dir, etcd, id, txn_timeout, "2s")
}

/// [`start_node_at`] with an etcd lease of `lease`.
fn start_node_leased(dir: &std::path::Path, etcd: &str, id: &str, txn_timeout: &str, lease: &str) -> Node {
    start_node_with(dir, etcd, id, txn_timeout, lease, &[])
}

/// [`start_node_leased`] with `extra` flags.
fn start_node_with(
    dir: &std::path::Path,
    etcd: &str,
    id: &str,
    txn_timeout: &str,
    lease: &str,
    extra: &[&str],
) -> Node {
    let mut args = vec![
        "--etcd",
        etcd,
        "--node-id",
        id,
        "--etcd-lease-ttl",
        lease,
        "--long-polling-max",
        "1s",
        "--metrics-listen",
        "off",
        "--txn-timeout",
        txn_timeout,
        "--txn-check-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    let (child, addr, log) = start_broker(dir, &args);
    Node { child, addr, _dir: None, _log: log }
}

fn client_option(addr: &str) -> ClientOption {
    let mut o = ClientOption::default();
    o.set_access_url(addr);
    o.set_enable_tls(false);
    o
}

fn quiet() -> rocketmq::conf::LoggingFormat {
    std::fs::create_dir_all("logs").unwrap();
    rocketmq::conf::LoggingFormat::Json
}

async fn producer(addr: &str, topics: &[&str]) -> Producer {
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet());
    opt.set_topics(topics.to_vec());
    let mut p = Producer::new(opt, client_option(addr)).unwrap();
    p.start().await.expect("producer starts");
    p
}

async fn consumer(addr: &str, group: &str, topics: &[&str]) -> SimpleConsumer {
    let mut opt = SimpleConsumerOption::default();
    opt.set_logging_format(quiet());
    opt.set_consumer_group(group);
    opt.set_topics(topics.to_vec());
    let mut c = SimpleConsumer::new(opt, client_option(addr)).unwrap();
    c.start().await.expect("consumer starts");
    c
}

/// Receives and acks until `want` messages came or `within` passed; returns (id, body) pairs.
async fn drain(c: &SimpleConsumer, topic: &str, want: usize, within: Duration) -> Vec<(String, String)> {
    let filter = FilterExpression::new(FilterType::Tag, "*");
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < want && started.elapsed() < within {
        for m in c.receive(topic.to_string(), &filter).await.expect("receive") {
            c.ack(&m).await.expect("ack");
            got.push((m.message_id().to_string(), String::from_utf8_lossy(m.body()).to_string()));
        }
    }
    got
}

/// One ReceiveMessage through `addr` for the queues of broker name `broker`, as the official
/// clients send it; returns the answer's status code and how many messages came.
async fn receive_at(addr: &str, group: &str, topic: &str, broker: &str) -> (i32, Vec<v2::Message>) {
    let mut c = v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let res = |name: &str| Some(v2::Resource { resource_namespace: String::new(), name: name.into() });
    let req = v2::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(v2::MessageQueue {
            topic: res(topic),
            broker: Some(v2::Broker { name: broker.into(), ..Default::default() }),
            ..Default::default()
        }),
        filter_expression: Some(v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "*".into() }),
        batch_size: 16,
        invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    };
    common::read_receive(c.receive_message(req).await.unwrap().into_inner()).await
}

async fn create_topic(addr: &str, name: &str, ty: pb::TopicType, queues: u32) {
    let mut admin = Admin::connect(format!("http://{addr}")).await.unwrap();
    let r = admin
        .create_topic(pb::CreateTopicRequest { name: name.into(), r#type: ty as i32, queue_count: queues })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
}

/// Messages of `topic` each node stores (its own shard), from the cluster-wide `topic
/// describe` answered by node `addr`: owner → count.
async fn stored_per_owner(addr: &str, topic: &str) -> std::collections::BTreeMap<String, u64> {
    let mut admin = Admin::connect(format!("http://{addr}")).await.unwrap();
    let r = admin.describe_topic(pb::DescribeTopicRequest { name: topic.into() }).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    let mut per = std::collections::BTreeMap::new();
    for q in &r.queues {
        *per.entry(q.owner.clone()).or_default() += q.max_offset - q.min_offset;
    }
    assert_eq!(per.values().sum::<u64>(), r.message_count, "the count is the owners' sum");
    per
}

/// One message to `ledger` in each of `groups` message groups (`account-0` …); how many were
/// taken and how many refused, each refusal saying `refusal`.
async fn send_groups(p: &Producer, groups: usize, refusal: &str) -> (u64, u64) {
    let (mut taken, mut refused) = (0, 0);
    for g in 0..groups {
        let m = MessageBuilder::fifo_message_builder("ledger", b"e".to_vec(), format!("account-{g}")).build().unwrap();
        match p.send(m).await {
            Ok(_) => taken += 1,
            Err(e) => {
                assert!(format!("{e:?}").contains(refusal), "{e:?}");
                refused += 1;
            }
        }
    }
    (taken, refused)
}

async fn wait_members(addr: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut admin = Admin::connect(format!("http://{addr}")).await.unwrap();
        let s = admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
        if s.nodes.len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} members not seen: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_address_reaches_queues_on_every_node() {
    let etcd = Etcd::start();
    let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|id| start_node(&etcd.url, id)).collect();
    // Each node's member list refreshes with its lease (every third of 2 s).
    for n in &nodes {
        wait_members(&n.addr, 3).await;
    }
    create_topic(&nodes[0].addr, "orders", pb::TopicType::Normal, 12).await;

    let p = producer(&nodes[0].addr, &["orders"]).await;
    let mut sent = HashSet::new();
    for i in 0..3000 {
        let m = MessageBuilder::builder().set_topic("orders").set_body(format!("m{i}").into_bytes()).build().unwrap();
        sent.insert(p.send(m).await.expect("send through node 1").message_id().to_string());
    }
    // Any node answers for the whole topic, each queue with its owner.
    let stored = stored_per_owner(&nodes[2].addr, "orders").await;
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["n1", "n2", "n3"], "{stored:?}");
    assert!(stored.values().all(|n| *n > 0), "every node stores some: {stored:?}");
    assert_eq!(stored.values().sum::<u64>(), 3000, "{stored:?}");

    let c = consumer(&nodes[1].addr, "billing", &["orders"]).await;
    let got = drain(&c, "orders", 3000, Duration::from_secs(120)).await;
    let ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
    let unique: HashSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(ids.len(), 3000, "received through node 2");
    assert_eq!(unique, sent, "each message exactly once");

    // 30 more, not consumed: any node sums the group's backlog over every owner.
    for i in 0..30 {
        let m =
            MessageBuilder::builder().set_topic("orders").set_body(format!("late{i}").into_bytes()).build().unwrap();
        p.send(m).await.expect("send");
    }
    let mut admin = Admin::connect(format!("http://{}", nodes[2].addr)).await.unwrap();
    let g = admin.describe_group(pb::DescribeGroupRequest { name: "billing".into() }).await.unwrap().into_inner();
    let topics = g.group.unwrap().topics;
    let orders = topics.iter().find(|t| t.topic == "orders").unwrap();
    assert_eq!((orders.backlog, orders.in_flight), (30, 0), "{topics:?}");

    // FIFO: one message group's messages, sent through node 1, arrive in order through node 3.
    create_topic(&nodes[0].addr, "ledger", pb::TopicType::Fifo, 6).await;
    let p = producer(&nodes[0].addr, &["ledger"]).await;
    for i in 0..30 {
        let m = MessageBuilder::fifo_message_builder("ledger", format!("e{i}").into_bytes(), "account-7".to_string())
            .build()
            .unwrap();
        p.send(m).await.expect("FIFO send");
    }
    let c = consumer(&nodes[2].addr, "auditors", &["ledger"]).await;
    let got = drain(&c, "ledger", 30, Duration::from_secs(60)).await;
    let bodies: Vec<String> = got.into_iter().map(|(_, b)| b).collect();
    assert_eq!(bodies, (0..30).map(|i| format!("e{i}")).collect::<Vec<_>>());
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_end_and_are_checked_back_across_nodes() {
    use rocketmq::model::transaction::{Transaction, TransactionResolution};
    let etcd = Etcd::start();
    let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|id| start_node(&etcd.url, id)).collect();
    for n in &nodes {
        wait_members(&n.addr, 3).await;
    }
    create_topic(&nodes[0].addr, "payments", pb::TopicType::Transaction, 3).await;

    // The producer talks to node 1 only; its checker commits "yes…" and rolls back the rest.
    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet());
    opt.set_topics(vec!["payments"]);
    let checker = Box::new(|_id: String, m: rocketmq::model::message::MessageView| {
        if m.body().starts_with(b"yes") {
            TransactionResolution::COMMIT
        } else {
            TransactionResolution::ROLLBACK
        }
    });
    let mut p = Producer::new_transaction_producer(opt, client_option(&nodes[0].addr), checker).unwrap();
    p.start().await.unwrap();
    let half =
        |body: String| MessageBuilder::transaction_message_builder("payments", body.into_bytes()).build().unwrap();
    let mut owners = HashSet::new();
    let mut undecided = Vec::new();
    for i in 0..9 {
        let t = p.send_transaction_message(half(format!("commit-{i}"))).await.unwrap();
        owners.insert(t.transaction_id().split('~').next().unwrap().to_string());
        t.commit().await.expect("commit through node 1");
        let t = p.send_transaction_message(half(format!("rollback-{i}"))).await.unwrap();
        owners.insert(t.transaction_id().split('~').next().unwrap().to_string());
        t.rollback().await.expect("rollback through node 1");
        // The producer "forgets" these: only a check-back decides them.
        for body in [format!("yes-{i}"), format!("no-{i}")] {
            let t = p.send_transaction_message(half(body)).await.unwrap();
            undecided.push(t.transaction_id().to_string());
        }
    }
    assert_eq!(owners.len(), 3, "halves landed on every node: {owners:?}");
    assert!(undecided.iter().any(|id| !id.starts_with("n1~")), "some undecided halves are owned elsewhere");
    // Any node lists every owner's transactions under the ids clients hold, and shows one.
    let mut admin = Admin::connect(format!("http://{}", nodes[2].addr)).await.unwrap();
    let list = admin.list_transactions(pb::ListTransactionsRequest::default()).await.unwrap().into_inner();
    let listed: HashSet<String> = list.transactions.iter().map(|t| t.id.clone()).collect();
    assert_eq!(list.transactions.len(), 36, "{listed:?}");
    assert!(undecided.iter().all(|id| listed.contains(id)), "{undecided:?} in {listed:?}");
    let elsewhere = undecided.iter().find(|id| !id.starts_with("n3~")).unwrap();
    let shown = admin.get_transaction(pb::GetTransactionRequest { id: elsewhere.clone() }).await.unwrap().into_inner();
    assert_eq!(shown.transaction.unwrap().id, *elsewhere);

    let c = consumer(&nodes[1].addr, "ledger", &["payments"]).await;
    let got = drain(&c, "payments", 18, Duration::from_secs(60)).await;
    let mut bodies: Vec<String> = got.into_iter().map(|(_, b)| b).collect();
    bodies.sort();
    let mut want: Vec<String> = (0..9).flat_map(|i| [format!("commit-{i}"), format!("yes-{i}")]).collect();
    want.sort();
    assert_eq!(bodies, want, "committed and checked-back-committed halves, each once; nothing rolled back");
    // Nothing more comes (rolled-back halves never do).
    assert!(drain(&c, "payments", 1, Duration::from_secs(3)).await.is_empty());
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_skipped_and_serves_its_messages_and_halves_when_it_returns() {
    use rocketmq::model::transaction::{Transaction, TransactionResolution};
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Checks start after 4 s: node 3 dies with an undecided half before its first check.
    let mut nodes: Vec<Node> =
        ["n1", "n2", "n3"].iter().zip(&dirs).map(|(id, d)| start_node_at(d.path(), &etcd.url, id, "4s")).collect();
    for n in &nodes {
        wait_members(&n.addr, 3).await;
    }
    create_topic(&nodes[0].addr, "orders", pb::TopicType::Normal, 6).await;
    create_topic(&nodes[0].addr, "payments", pb::TopicType::Transaction, 3).await;
    let p = producer(&nodes[0].addr, &["orders"]).await;
    let send = |i: usize, tag: &'static str| {
        MessageBuilder::builder().set_topic("orders").set_body(format!("{tag}{i}").into_bytes()).build().unwrap()
    };
    let mut sent = HashSet::new();
    for i in 0..60 {
        sent.insert(p.send(send(i, "before-")).await.expect("send").message_id().to_string());
    }
    assert!(stored_per_owner(&nodes[0].addr, "orders").await["n3"] > 0, "node 3 holds some messages");

    let mut opt = ProducerOption::default();
    opt.set_logging_format(quiet());
    opt.set_topics(vec!["payments"]);
    let checker = Box::new(|_id: String, _m: rocketmq::model::message::MessageView| TransactionResolution::COMMIT);
    let mut tp = Producer::new_transaction_producer(opt, client_option(&nodes[0].addr), checker).unwrap();
    tp.start().await.unwrap();
    let mut on_n3 = None;
    for i in 0..12 {
        let half =
            MessageBuilder::transaction_message_builder("payments", format!("half-{i}").into_bytes()).build().unwrap();
        let t = tp.send_transaction_message(half).await.unwrap();
        if t.transaction_id().starts_with("n3~") {
            on_n3 = Some(format!("half-{i}"));
            drop(t); // undecided: only a check-back decides it
            break;
        }
        t.commit().await.unwrap();
    }
    let on_n3 = on_n3.expect("a half landed on node 3");

    // SIGKILL node 3: sends through node 1 go on without an error.
    let mut n3 = nodes.pop().unwrap();
    signal_pid(n3.child.id(), "KILL");
    n3.child.wait().unwrap();
    // A receive through node 2 that names node 3's queues, before node 3's lease expires (it
    // is still listed): passed to a live owner, not answered with an error.
    let (code, got) = receive_at(&nodes[1].addr, "probe", "orders", "n3").await;
    assert_eq!(code, v2::Code::Ok as i32, "a receive naming the dead node");
    assert!(!got.is_empty());
    let started = Instant::now();
    for i in 0..60 {
        sent.insert(p.send(send(i, "during-")).await.expect("send while node 3 is down").message_id().to_string());
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // Node 3 returns on its data: its messages are consumed and its half is checked back
    // (through the producer's stream on node 1) and committed.
    let n3 = start_node_at(dirs[2].path(), &etcd.url, "n3", "4s");
    wait_members(&nodes[0].addr, 3).await;
    let c = consumer(&nodes[1].addr, "billing", &["orders", "payments"]).await;
    let got = drain(&c, "orders", 120, Duration::from_secs(60)).await;
    let ids: HashSet<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got.len(), 120);
    assert_eq!(ids, sent, "every message, node 3's included, once");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut halves = Vec::new();
    while !halves.contains(&on_n3) && Instant::now() < deadline {
        halves.extend(drain(&c, "payments", 1, Duration::from_secs(2)).await.into_iter().map(|(_, b)| b));
    }
    assert!(halves.contains(&on_n3), "node 3's undecided half was checked back and committed: {halves:?}");
    drop(n3);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_still_listed_is_skipped_by_sends_and_receives_through_the_others() {
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A 30 s lease: node 3 stays a listed member for the whole time it is frozen, as a hung
    // machine is until its lease runs out. Only the nodes' own calls can find it out.
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .zip(&dirs)
        .map(|(id, d)| start_node_leased(d.path(), &etcd.url, id, "1s", "30s"))
        .collect();
    for n in &nodes {
        wait_members(&n.addr, 3).await;
    }
    create_topic(&nodes[0].addr, "orders", pb::TopicType::Normal, 6).await;
    let p = producer(&nodes[0].addr, &["orders"]).await;
    let send = |i: usize, tag: &'static str| {
        MessageBuilder::builder().set_topic("orders").set_body(format!("{tag}{i}").into_bytes()).build().unwrap()
    };
    let mut sent = HashSet::new();
    for i in 0..30 {
        sent.insert(p.send(send(i, "before-")).await.expect("send").message_id().to_string());
    }
    assert!(stored_per_owner(&nodes[0].addr, "orders").await["n3"] > 0, "node 3 holds some messages");

    // SIGSTOP node 3: its kernel still accepts connections and holds what is sent to it.
    signal_pid(nodes[2].child.id(), "STOP");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let t = Instant::now();
        sent.insert(p.send(send(i, "during-")).await.expect("send while node 3 is frozen").message_id().to_string());
        slowest = slowest.max(t.elapsed());
    }
    let sending = started.elapsed();
    // A receive through node 2 naming node 3's queues is passed to a live owner in time.
    let t = Instant::now();
    let (code, got) = receive_at(&nodes[1].addr, "probe", "orders", "n3").await;
    let receiving = t.elapsed();
    let mut admin = Admin::connect(format!("http://{}", nodes[0].addr)).await.unwrap();
    let listed = admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner().nodes.len();
    // An operator's question that needs every owner is answered, with an error naming the
    // frozen node (a partial answer is never presented as whole), instead of waiting for it.
    let t = Instant::now();
    let described = tokio::time::timeout(
        Duration::from_secs(10),
        admin.describe_topic(pb::DescribeTopicRequest { name: "orders".into() }),
    )
    .await;
    let describing = t.elapsed();
    signal_pid(nodes[2].child.id(), "CONT");
    let described = described.expect("topic describe answers while node 3 is frozen").unwrap().into_inner();
    let status = described.status.unwrap();
    assert_eq!(status.code, pb::StatusCode::Unavailable as i32, "{status:?}");
    assert!(status.message.contains("n3") && describing < Duration::from_secs(5), "{status:?} in {describing:?}");
    eprintln!(
        "frozen node 3: 60 sends in {sending:?} (slowest {slowest:?}); a receive naming it in {receiving:?}; \
         topic describe in {describing:?}"
    );
    assert_eq!(listed, 3, "node 3 was still listed while frozen: the test measured the nodes' own calls");
    assert!(sending < Duration::from_secs(10), "60 sends took {sending:?}, the slowest {slowest:?}");
    assert_eq!(code, v2::Code::Ok as i32, "a receive naming the frozen node");
    assert!(!got.is_empty() && receiving < Duration::from_secs(5), "{} messages in {receiving:?}", got.len());

    // Thawed: node 1's probe finds node 3 answering, and sends reach it again.
    let on_n3 = stored_per_owner(&nodes[0].addr, "orders").await["n3"];
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..30 {
        sent.insert(p.send(send(i, "after-")).await.expect("send after the thaw").message_id().to_string());
    }
    let now_on_n3 = stored_per_owner(&nodes[0].addr, "orders").await["n3"];
    assert!(now_on_n3 > on_n3, "node 3 takes sends again: {on_n3} then {now_on_n3}");

    // Every acknowledged send is consumed. A send node 1 gave up on may have reached
    // node 3's socket before it froze, and be stored there too: at least once, never lost.
    let c = consumer(&nodes[1].addr, "billing", &["orders"]).await;
    let got = drain(&c, "orders", sent.len(), Duration::from_secs(60)).await;
    let ids: HashSet<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, sent, "every acknowledged send, node 3's included");
    drop(etcd);
}

/// A node whose disk is under its `--min-free-disk-bytes` refuses the sends it would store
/// (here: a floor no disk reaches). A send passed to it goes on to another owner, so the
/// cluster keeps taking sends, through that node too; a message group's send, whose queue has
/// one owner, gets the refusal. The status names the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_go_on_to_another_owner_while_one_nodes_disk_is_nearly_full() {
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let full = ["--min-free-disk-bytes", "18446744073709551615"];
    let nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .zip(&dirs)
        .map(|(id, d)| start_node_with(d.path(), &etcd.url, id, "1s", "2s", if *id == "n3" { &full } else { &[] }))
        .collect();
    for n in &nodes {
        wait_members(&n.addr, 3).await;
    }
    create_topic(&nodes[0].addr, "orders", pb::TopicType::Normal, 12).await;
    let mut sent = HashSet::new();
    for (via, n) in [(0, 30), (2, 30)] {
        let p = producer(&nodes[via].addr, &["orders"]).await;
        for i in 0..n {
            let m = MessageBuilder::builder()
                .set_topic("orders")
                .set_body(format!("m{via}-{i}").into_bytes())
                .build()
                .unwrap();
            let r = p.send(m).await.unwrap_or_else(|e| panic!("send {i} through node {}: {e:?}", via + 1));
            sent.insert(r.message_id().to_string());
        }
    }
    let stored = stored_per_owner(&nodes[1].addr, "orders").await;
    assert_eq!(stored.get("n3").copied().unwrap_or(0), 0, "the node short of disk stores none: {stored:?}");
    assert_eq!(stored.values().sum::<u64>(), 60, "{stored:?}");
    assert!(stored["n1"] > 0 && stored["n2"] > 0, "{stored:?}");

    let mut admin = Admin::connect(format!("http://{}", nodes[0].addr)).await.unwrap();
    let s = admin.broker_status(pb::BrokerStatusRequest {}).await.unwrap().into_inner();
    assert!(s.messages_refused.starts_with("node n3: new messages refused"), "{:?}", s.messages_refused);
    assert!(s.store_writable);
    let n3 = s.nodes.iter().find(|n| n.node_id == "n3").unwrap();
    assert!(n3.messages_refused.contains("--min-free-disk-bytes") && n3.disk_free_bytes > 0, "{n3:?}");

    // Message groups: those whose queue node 3 owns get its refusal, the others are taken.
    create_topic(&nodes[0].addr, "ledger", pb::TopicType::Fifo, 6).await;
    let p = producer(&nodes[0].addr, &["ledger"]).await;
    let (taken, refused) = send_groups(&p, 12, "new messages refused").await;
    eprintln!("ledger: {taken} message groups taken, {refused} refused");
    let ledger = stored_per_owner(&nodes[1].addr, "ledger").await;
    assert_eq!(ledger.values().sum::<u64>(), taken, "{ledger:?}");
    assert!(taken > 0 && refused > 0, "12 groups over 3 owners: {taken} taken, {refused} refused");

    let c = consumer(&nodes[2].addr, "billing", &["orders"]).await;
    let got = drain(&c, "orders", 60, Duration::from_secs(30)).await;
    let ids: HashSet<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!((got.len(), ids), (60, sent), "each message received once, through node 3 too");
    drop(etcd);
}

/// `--replicas 2 --min-insync-replicas 2`, node 1's follower killed: node 1's shard has one
/// copy in sync and refuses writes. A send with no message group passed to it goes on to the
/// next owner; a message group's send gets the refusal. A receive passed to it (which writes)
/// goes on to the next owner too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_and_receives_go_on_to_another_owner_while_a_shard_has_too_few_copies_in_sync() {
    let etcd = Etcd::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicated = ["--replicas", "2", "--min-insync-replicas", "2", "--replica-ack-timeout", "1s"];
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .zip(&dirs)
        .map(|(id, d)| start_node_with(d.path(), &etcd.url, id, "1s", "2s", &replicated))
        .collect();
    for n in &nodes {
        wait_members(&n.addr, 3).await;
    }
    let mut admin = Admin::connect(format!("http://{}", nodes[0].addr)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let follower = loop {
        let s = admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
        // Each shard led by its own node, its follower connected and in sync: a node slow to
        // start may find its shard taken over from its copy, and get it back only later.
        let settled = |sh: &pb::ShardStatus| {
            sh.leader == sh.shard && sh.in_sync.len() == 1 && sh.replicas.iter().all(|r| r.in_sync && r.connected)
        };
        if s.shards.len() == 3 && s.shards.iter().all(settled) {
            break s.shards.iter().find(|sh| sh.shard == "n1").unwrap().in_sync[0].clone();
        }
        assert!(Instant::now() < deadline, "every shard with its follower in sync: {:#?}", s.shards);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    create_topic(&nodes[0].addr, "orders", pb::TopicType::Normal, 12).await;
    create_topic(&nodes[0].addr, "ledger", pb::TopicType::Fifo, 12).await;

    // Node 1's follower killed. Past the lease its own shard is taken over from its copy (under
    // its id again, so the member count is no sign: it may never be seen at 2); node 1's shard
    // loses its in-sync follower at its next write, and then refuses writes.
    let killed = if follower == "n2" { 1 } else { 2 };
    nodes[killed].child.kill().unwrap();
    nodes[killed].child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = admin.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
        if s.shards.iter().any(|sh| sh.shard == follower && sh.leader != follower) {
            break;
        }
        assert!(Instant::now() < deadline, "{follower}'s shard not taken over: {:#?}", s.shards);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let p = producer(&nodes[0].addr, &["orders", "ledger"]).await;
    let mut sent = HashSet::new();
    for i in 0..60 {
        let m = MessageBuilder::builder().set_topic("orders").set_body(format!("m{i}").into_bytes()).build().unwrap();
        let r = p.send(m).await.unwrap_or_else(|e| panic!("send {i} through node 1: {e:?}"));
        sent.insert(r.message_id().to_string());
    }
    let (taken, refused) = send_groups(&p, 24, "in-sync").await;
    eprintln!("ledger: {taken} message groups taken, {refused} refused for want of in-sync copies");
    assert!(
        taken > 0 && refused > 0,
        "24 groups over 3 shards, some short of copies: {taken} taken, {refused} refused"
    );

    // Every acknowledged send is received through node 1, whose own shard cannot serve a
    // receive (a refused write may have been stored by its owner all the same, and is then
    // received too: at least once).
    let c = consumer(&nodes[0].addr, "billing", &["orders"]).await;
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent.is_subset(&ids) && Instant::now() < deadline {
        ids.extend(drain(&c, "orders", 1, Duration::from_secs(2)).await.into_iter().map(|(id, _)| id));
    }
    assert!(sent.is_subset(&ids), "{} of 60 acknowledged sends received", sent.intersection(&ids).count());
    drop(etcd);
}
