//! Natural batching in the SDK and the batched transaction-decision call, against an
//! in-process broker: each send keeps its own receipt and error, a FIFO group keeps its order,
//! one invalid message fails alone, and `txmq.v1.Transactions/EndTransactions` mixes commits
//! and rollbacks, answers each decision, and is idempotent; one-way commits all reach the
//! broker by the time the producer's shutdown returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use txmq_broker::config::Config;
use txmq_broker::server::{self, RunningBroker};
use txmq_client::{Batching, ClientConfig, Message, Producer, SimpleConsumer};
use txmq_proto::ext::{call, transactions_client::TransactionsClient, Call, Decision, EndTransactionsRequest};
use txmq_proto::v2;

async fn start(dir: &std::path::Path) -> RunningBroker {
    let mut c = Config::with_data_dir(dir);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.long_polling_max = Duration::from_secs(1);
    c.max_body_size = 4096;
    server::spawn(c).await.unwrap()
}

/// How many calls of `rpc` the broker served (its latency histogram's count).
fn calls(broker: &RunningBroker, rpc: &str) -> u64 {
    let text = broker.broker.metrics().render(&broker.broker.gauges());
    let series = format!("rocketmq_rpc_latency_count{{protocol_type=\"grpc\",request_code=\"{rpc}\"}}");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

/// One task per body, each sending it to `orders` through `p` at once.
fn spawn_sends(
    p: &Producer,
    bodies: impl Iterator<Item = Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<txmq_client::Result<txmq_client::SendReceipt>>> {
    bodies
        .map(|body| {
            let p = p.clone();
            tokio::spawn(async move { p.send(Message::new("orders", body)).await })
        })
        .collect()
}

async fn receive_bodies(broker: &RunningBroker, group: &str, topic: &str, want: usize) -> Vec<String> {
    let c = SimpleConsumer::connect(ClientConfig::new(broker.access_point()), group).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bodies = Vec::new();
    while bodies.len() < want && Instant::now() < deadline {
        for m in c.receive_for(topic, "*", 32, Duration::from_secs(30), Duration::from_millis(500)).await.unwrap() {
            c.ack(&m).await.unwrap();
            bodies.push(String::from_utf8(m.body).unwrap());
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_requests_and_keep_their_own_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let p = Producer::connect(ClientConfig::new(broker.access_point()), &["orders"]).await.unwrap();
    let before = calls(&broker, "SendMessage");
    let sends = spawn_sends(&p, (0..200).map(|i| format!("order {i}").into_bytes()));
    let mut ids = BTreeSet::new();
    for s in sends {
        ids.insert(s.await.unwrap().unwrap().message_id);
    }
    assert_eq!(ids.len(), 200, "one receipt per send, each with its own message id");
    let requests = calls(&broker, "SendMessage") - before;
    assert!(requests < 200, "200 concurrent sends in {requests} requests");
    eprintln!("200 concurrent sends in {requests} SendMessage requests");
    let got: BTreeSet<String> = receive_bodies(&broker, "billing", "orders", 200).await.into_iter().collect();
    assert_eq!(got, (0..200).map(|i| format!("order {i}")).collect());
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_message_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let p = Producer::connect(ClientConfig::new(broker.access_point()), &["orders"]).await.unwrap();
    // Message 17 is larger than the broker's --max-body-size: only it is refused.
    let bodies = (0..40).map(|i| if i == 17 { vec![b'x'; 8192] } else { format!("order {i}").into_bytes() });
    let sends = spawn_sends(&p, bodies);
    for (i, s) in sends.into_iter().enumerate() {
        let r = s.await.unwrap();
        if i == 17 {
            let e = r.expect_err("the oversized message is refused");
            assert!(!e.is_retryable(), "{e}");
        } else {
            r.unwrap_or_else(|e| panic!("message {i} failed with the invalid one: {e}"));
        }
    }
    assert_eq!(receive_bodies(&broker, "billing", "orders", 39).await.len(), 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_group_keeps_its_order_under_batching() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let p = Producer::connect(ClientConfig::new(broker.access_point()), &["ledger"]).await.unwrap();
    // Sequential sends of one group, while other tasks flood the producer (so batches form).
    let flood: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    p.send(Message::new("ledger", format!("noise {t}-{i}")).with_message_group(format!("n{t}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for i in 0..100 {
        p.send(Message::new("ledger", format!("{i:03}")).with_message_group("account-7")).await.unwrap();
    }
    for f in flood {
        f.await.unwrap();
    }
    let ours: Vec<String> =
        receive_bodies(&broker, "audit", "ledger", 300).await.into_iter().filter(|b| !b.starts_with("noise")).collect();
    assert_eq!(ours, (0..100).map(|i| format!("{i:03}")).collect::<Vec<_>>(), "the group's order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_off_sends_one_request_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let config = ClientConfig::new(broker.access_point()).with_batching(Batching::off());
    let p = Producer::connect(config, &["orders"]).await.unwrap();
    let before = calls(&broker, "SendMessage");
    let sends = spawn_sends(&p, (0..30).map(|i| format!("o{i}").into_bytes()));
    for s in sends {
        s.await.unwrap().unwrap();
    }
    assert_eq!(calls(&broker, "SendMessage") - before, 30);
}

/// A message as the messaging API carries it.
fn wire(topic: &str, id: &str, body: &str, ty: v2::MessageType) -> v2::Message {
    v2::Message {
        topic: Some(v2::Resource { name: topic.into(), ..Default::default() }),
        body: body.as_bytes().to_vec(),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: ty as i32,
            body_encoding: v2::Encoding::Identity as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Half messages sent through the messaging API; their transaction ids.
async fn halves(broker: &RunningBroker, n: usize) -> Vec<(String, String)> {
    let mut c =
        v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("half-{i}");
        let m = wire("payments", &id, &format!("payment {i}"), v2::MessageType::Transaction);
        let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
        out.push((id, r.entries[0].transaction_id.clone()));
    }
    out
}

fn decision(id: &(String, String), resolution: v2::TransactionResolution) -> Decision {
    Decision {
        topic: "payments".into(),
        message_id: id.0.clone(),
        transaction_id: id.1.clone(),
        resolution: resolution as i32,
        source: v2::TransactionSource::SourceClient as i32,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_transactions_mixes_decisions_answers_each_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let h = halves(&broker, 10).await;
    use v2::TransactionResolution::{Commit, Rollback};
    let mut decisions: Vec<Decision> =
        h.iter().enumerate().map(|(i, t)| decision(t, if i % 2 == 0 { Commit } else { Rollback })).collect();
    // An unknown transaction: refused alone.
    decisions.push(decision(&("nope".into(), "no-such-transaction".into()), Commit));
    let mut client = TransactionsClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let r =
        client.end_transactions(EndTransactionsRequest { decisions: decisions.clone() }).await.unwrap().into_inner();
    assert_eq!(r.code, v2::Code::Ok as i32, "{}", r.message);
    assert_eq!(r.results.len(), 11);
    assert!(r.results[..10].iter().all(|s| s.code == v2::Code::Ok as i32), "{:?}", r.results);
    assert_ne!(r.results[10].code, v2::Code::Ok as i32, "the unknown transaction is refused");
    // The same call again: every decision is the transaction's own, accepted again.
    let again = client.end_transactions(EndTransactionsRequest { decisions }).await.unwrap().into_inner();
    assert!(again.results[..10].iter().all(|s| s.code == v2::Code::Ok as i32), "{:?}", again.results);
    // The opposite decision is refused, for that transaction only.
    let flip = vec![decision(&h[0], Rollback), decision(&h[1], Rollback)];
    let flipped = client.end_transactions(EndTransactionsRequest { decisions: flip }).await.unwrap().into_inner();
    assert_ne!(flipped.results[0].code, v2::Code::Ok as i32, "a committed transaction cannot be rolled back");
    assert_eq!(flipped.results[1].code, v2::Code::Ok as i32);
    let mut got = receive_bodies(&broker, "pay", "payments", 5).await;
    got.sort();
    assert_eq!(got, (0..10).step_by(2).map(|i| format!("payment {i}")).collect::<Vec<_>>());
    // More than the bound: refused as a whole.
    let too_many = (0..1001).map(|_| decision(&h[0], Commit)).collect();
    let r = client.end_transactions(EndTransactionsRequest { decisions: too_many }).await.unwrap().into_inner();
    assert_eq!(r.code, v2::Code::BadRequest as i32);
    assert!(r.results.is_empty());
}

/// A checker that never decides: only a producer's own decisions end its transactions.
fn never_checked_producer_checker() -> Arc<dyn txmq_client::TransactionChecker> {
    struct Never;
    #[async_trait::async_trait]
    impl txmq_client::TransactionChecker for Never {
        async fn check(&self, _: &txmq_client::CheckRequest) -> txmq_client::Resolution {
            txmq_client::Resolution::Unknown
        }
    }
    Arc::new(Never)
}

/// A transactional producer of `payments` whose checker never decides.
async fn never_checked_producer(broker: &RunningBroker) -> txmq_client::TransactionProducer {
    let config = ClientConfig::new(broker.access_point());
    txmq_client::TransactionProducer::connect(config, &["payments"], never_checked_producer_checker()).await.unwrap()
}

/// `n` half messages `payment {i}` to `payments`, begun at once.
async fn begin_payments(p: &txmq_client::TransactionProducer, n: usize) -> Vec<txmq_client::PendingTransaction> {
    let begun: Vec<_> = (0..n)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move { p.begin(Message::new("payments", format!("payment {i}"))).await.unwrap() })
        })
        .collect();
    let mut pending = Vec::new();
    for b in begun {
        pending.push(b.await.unwrap());
    }
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sends_concurrent_decisions_in_end_transactions_calls() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let p = never_checked_producer(&broker).await;
    let (before_one, before_many) = (calls(&broker, "EndTransaction"), calls(&broker, "EndTransactions"));
    let runs: Vec<_> = (0..100)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let pending = p.begin(Message::new("payments", format!("payment {i}"))).await.unwrap();
                if i % 2 == 0 {
                    pending.commit().await
                } else {
                    pending.rollback().await
                }
            })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let (one, many) = (calls(&broker, "EndTransaction") - before_one, calls(&broker, "EndTransactions") - before_many);
    eprintln!("100 decisions: {many} EndTransactions calls, {one} EndTransaction calls");
    assert!(many > 0 && many + one < 100, "{many} batched calls, {one} single calls");
    let mut got = receive_bodies(&broker, "pay", "payments", 50).await;
    got.sort();
    let mut want: Vec<String> = (0..100).step_by(2).map(|i| format!("payment {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_commits_reach_the_broker_before_shutdown_returns() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    // Every message delivered was committed by its one-way commit (no check-back commits).
    let p = never_checked_producer(&broker).await;
    // Many halves first, then their one-way commits all at once: more decisions than one
    // round trip carries are still queued when shutdown starts.
    const N: usize = 600;
    let pending = begin_payments(&p, N).await;
    assert_eq!(broker.broker.gauges().pending_transactions, N as u64);
    for t in pending {
        t.commit_oneway().await;
    }
    p.shutdown().await.unwrap();
    assert_eq!(broker.broker.gauges().pending_transactions, 0, "a one-way commit was still out after shutdown");
    let mut got = receive_bodies(&broker, "pay", "payments", N).await;
    got.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("payment {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_one_stream_are_answered_by_id_and_a_bad_one_fails_alone() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let h = halves(&broker, 1).await;
    let send = |id: &str, body: &str| v2::SendMessageRequest {
        messages: vec![wire("orders", id, body, v2::MessageType::Normal)],
    };
    let commit = EndTransactionsRequest { decisions: vec![decision(&h[0], v2::TransactionResolution::Commit)] };
    let made = vec![
        Call { id: 7, request: Some(call::Request::SendMessage(send("m-7", "order 7").encode_to_vec())) },
        Call { id: 8, request: None },
        Call { id: 9, request: Some(call::Request::SendMessage(vec![0xff, 0xff, 0xff])) },
        Call { id: 10, request: Some(call::Request::EndTransactions(commit.encode_to_vec())) },
        Call { id: 11, request: Some(call::Request::SendMessage(send("m-11", &"x".repeat(8192)).encode_to_vec())) },
    ];
    let mut client = TransactionsClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    // The client's side ends after these calls: the broker answers them all, then ends too.
    let mut results = client.calls(futures_util::stream::iter(made)).await.unwrap().into_inner();
    let mut by_id = std::collections::BTreeMap::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), results.message()).await.unwrap().unwrap() {
        by_id.insert(r.id, r);
    }
    assert_eq!(by_id.keys().copied().collect::<Vec<_>>(), [7, 8, 9, 10, 11], "one result per call");
    let sent = v2::SendMessageResponse::decode(&by_id[&7].response[..]).unwrap();
    assert_eq!((by_id[&7].grpc_code, sent.status.unwrap().code), (0, v2::Code::Ok as i32));
    assert_eq!(sent.entries[0].message_id, "m-7");
    for bad in [8, 9] {
        assert_eq!(by_id[&bad].grpc_code, tonic::Code::InvalidArgument as i32, "{:?}", by_id[&bad]);
        assert!(!by_id[&bad].grpc_message.is_empty());
    }
    let ended = txmq_proto::ext::EndTransactionsResponse::decode(&by_id[&10].response[..]).unwrap();
    assert_eq!(ended.results[0].code, v2::Code::Ok as i32, "the commit, as EndTransactions answers it");
    // Checked as the unary call checks it: larger than the broker's --max-body-size.
    let refused = v2::SendMessageResponse::decode(&by_id[&11].response[..]).unwrap();
    assert_eq!(by_id[&11].grpc_code, 0);
    assert_ne!(refused.status.unwrap().code, v2::Code::Ok as i32);
    let mut got = receive_bodies(&broker, "billing", "orders", 1).await;
    got.extend(receive_bodies(&broker, "pay", "payments", 1).await);
    assert_eq!(got, ["order 7", "payment 0"]);
    assert_eq!(calls(&broker, "Calls"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_makes_its_sends_and_decisions_on_one_stream_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    for stream_calls in [true, false] {
        let before = (calls(&broker, "Calls"), calls(&broker, "SendMessage"));
        let config = ClientConfig { stream_calls, ..ClientConfig::new(broker.access_point()) };
        let p = txmq_client::TransactionProducer::connect(config, &["payments"], never_checked_producer_checker())
            .await
            .unwrap();
        let runs: Vec<_> = (0..50)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.producer().send(Message::new("payments", format!("plain {i}"))).await.unwrap();
                    p.begin(Message::new("payments", format!("payment {i}"))).await.unwrap().commit().await.unwrap();
                })
            })
            .collect();
        for r in runs {
            r.await.unwrap();
        }
        let streams = calls(&broker, "Calls") - before.0;
        assert_eq!(streams, u64::from(stream_calls), "streams opened with stream_calls = {stream_calls}");
        assert!(calls(&broker, "SendMessage") > before.1, "each call counts as its own RPC");
        p.shutdown().await.unwrap();
    }
    let got = receive_bodies(&broker, "pay", "payments", 200).await;
    assert_eq!(got.len(), 200, "every send and every committed message, once");
}

/// Batching bounds set above what the broker takes in one call (1,000 decisions) still give
/// every decision its own answer: the SDK never sends more in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_past_the_brokers_limit_per_call_are_split() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let mut config = ClientConfig::new(broker.access_point());
    config.batching = Batching { max_items: 5000, ..Default::default() };
    let p = txmq_client::TransactionProducer::connect(config, &["payments"], never_checked_producer_checker())
        .await
        .unwrap();
    const N: usize = 1500;
    let pending = begin_payments(&p, N).await;
    let commits: Vec<_> = pending.into_iter().map(|t| tokio::spawn(t.commit())).collect();
    for c in commits {
        c.await.unwrap().unwrap();
    }
    assert_eq!(broker.broker.gauges().pending_transactions, 0);
    p.shutdown().await.unwrap();
}
