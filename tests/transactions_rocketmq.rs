//! Transactional messages with the official Apache RocketMQ Rust client's transaction producer:
//! commit, rollback, check-back with every answer, repeated and contrary decisions, restarts,
//! and check routing when the sending producer is gone. Timings are shortened by config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{consumer, drain, producer, start, tags, txn, txn_config, txn_producer, wait_state};
use rocketmq::model::message::MessageBuilder;
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use std::time::Duration;
use txmq_proto::admin::TxnState;
use txmq_proto::v2;

const WAIT: Duration = Duration::from_secs(10);

fn half(topic: &str, body: &str) -> impl rocketmq::model::message::Message {
    MessageBuilder::transaction_message_builder(topic, body.as_bytes().to_vec()).build().unwrap()
}

fn bodies(msgs: &[rocketmq::model::message::MessageView]) -> Vec<String> {
    let mut v: Vec<String> = msgs.iter().map(|m| String::from_utf8(m.body().to_vec()).unwrap()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_delivers_once_and_rollback_never() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(txn_config(dir.path())).await;
    let p = txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let committed = p.send_transaction_message(half("orders", "committed")).await.unwrap();
    assert!(!committed.transaction_id().is_empty());
    let rolled_back = p.send_transaction_message(half("orders", "rolled-back")).await.unwrap();
    let (c_id, r_id) = (committed.transaction_id().to_string(), rolled_back.transaction_id().to_string());
    committed.commit().await.unwrap();
    rolled_back.rollback().await.unwrap();
    let control = producer(&broker, &["orders"]).await;
    control
        .send(MessageBuilder::builder().set_topic("orders").set_body(b"control".to_vec()).build().unwrap())
        .await
        .unwrap();

    let c = consumer(&broker, "inventory", &["orders"]).await;
    let got = drain(&c, "orders", &tags("*"), 3, Duration::from_secs(4)).await;
    assert_eq!(bodies(&got), ["committed", "control"], "committed once, rolled back never");
    assert_eq!(txn(&broker, &c_id).await.state, TxnState::Committed as i32);
    assert_eq!(txn(&broker, &r_id).await.state, TxnState::RolledBack as i32);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_transactions_are_resolved_by_check_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(txn_config(dir.path())).await;
    // The checker answers from the message: bodies saying "yes" commit, others roll back.
    let mut opt = rocketmq::conf::ProducerOption::default();
    opt.set_logging_format(common::quiet_logs());
    opt.set_topics(vec!["payments"]);
    let checker =
        Box::new(
            |_id: String, m: rocketmq::model::message::MessageView| {
                if m.body() == b"yes" {
                    TransactionResolution::COMMIT
                } else {
                    TransactionResolution::ROLLBACK
                }
            },
        );
    let mut p = rocketmq::Producer::new_transaction_producer(opt, common::client_option(&broker), checker).unwrap();
    p.start().await.unwrap();
    let yes = p.send_transaction_message(half("payments", "yes")).await.unwrap();
    let no = p.send_transaction_message(half("payments", "no")).await.unwrap();
    let (yes_id, no_id) = (yes.transaction_id().to_string(), no.transaction_id().to_string());
    drop((yes, no)); // the producer "crashes" before deciding

    let t = wait_state(&broker, &yes_id, TxnState::Committed).await;
    assert!(t.timeline.iter().any(|e| e.kind == "check" && e.answered && e.resolution == "COMMIT"), "{t:?}");
    let t = wait_state(&broker, &no_id, TxnState::RolledBack).await;
    assert!(t.timeline.iter().any(|e| e.kind == "decision" && e.by == "check"), "{t:?}");

    let c = consumer(&broker, "ledger", &["payments"]).await;
    let got = drain(&c, "payments", &tags("*"), 2, Duration::from_secs(4)).await;
    assert_eq!(bodies(&got), ["yes"]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_answers_are_checked_again_then_the_policy_applies() {
    for park in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = txn_config(dir.path());
        if park {
            config.txn_max_checks_policy = txmq_broker::txn::service::MaxChecksPolicy::Park;
        }
        let broker = start(config).await;
        let p = txn_producer(&broker, &["slow"], || TransactionResolution::UNKNOWN).await;
        let t = p.send_transaction_message(half("slow", "maybe")).await.unwrap();
        let id = t.transaction_id().to_string();
        let expected = if park { TxnState::Parked } else { TxnState::RolledBack };
        let t = wait_state(&broker, &id, expected).await;
        let checks: Vec<_> = t.timeline.iter().filter(|e| e.kind == "check").collect();
        assert_eq!(checks.len(), 3, "checked max-checks times: {t:?}");
        assert!(checks.iter().all(|e| e.answered && e.resolution == "UNKNOWN"));
        if park {
            // An operator decides; the timeline records it with the reason.
            let mut admin = common::admin(&broker).await;
            let r = admin
                .resolve_transaction(txmq_proto::admin::ResolveTransactionRequest {
                    id: id.clone(),
                    commit: true,
                    reason: "payment confirmed by the bank".into(),
                    actor: "test".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let t = r.transaction.unwrap();
            assert_eq!(t.state, TxnState::Committed as i32);
            let last = t.timeline.last().unwrap();
            assert_eq!((last.by.as_str(), last.reason.as_str()), ("operator", "payment confirmed by the bank"));
            let c = consumer(&broker, "audit", &["slow"]).await;
            assert_eq!(bodies(&drain(&c, "slow", &tags("*"), 1, Duration::from_secs(5)).await), ["maybe"]);
        } else {
            assert_eq!(t.timeline.last().unwrap().by, "policy");
        }
        broker.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_commit_after_a_check_commit_delivers_once_and_contrary_decisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(txn_config(dir.path())).await;
    let p = txn_producer(&broker, &["orders"], || TransactionResolution::COMMIT).await;
    let t = p.send_transaction_message(half("orders", "once")).await.unwrap();
    let (id, message_id) = (t.transaction_id().to_string(), t.message_id().to_string());
    wait_state(&broker, &id, TxnState::Committed).await;
    t.commit().await.expect("a late commit of a committed transaction is accepted");

    // A contrary decision is refused with a code the clients decode, and changes nothing.
    let mut raw =
        v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let end = |resolution: v2::TransactionResolution, txn: &str| v2::EndTransactionRequest {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: "orders".into() }),
        message_id: message_id.clone(),
        transaction_id: txn.to_string(),
        resolution: resolution as i32,
        source: v2::TransactionSource::SourceClient as i32,
        trace_context: String::new(),
    };
    let r = raw.end_transaction(end(v2::TransactionResolution::Rollback, &id)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::PreconditionFailed as i32);
    let r = raw.end_transaction(end(v2::TransactionResolution::Commit, "NO-SUCH-TXN")).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::InvalidTransactionId as i32);

    let c = consumer(&broker, "inventory", &["orders"]).await;
    assert_eq!(bodies(&drain(&c, "orders", &tags("*"), 2, Duration::from_secs(4)).await), ["once"]);
    assert_eq!(txn(&broker, &id).await.state, TxnState::Committed as i32);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_go_to_another_live_producer_when_the_sender_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = txn_config(dir.path());
    config.txn_timeout = Duration::from_secs(2);
    let broker = start(config).await;
    let first = txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let t = first.send_transaction_message(half("orders", "orphan")).await.unwrap();
    let id = t.transaction_id().to_string();
    drop(t);
    first.shutdown().await.unwrap();

    let second = txn_producer(&broker, &["orders"], || TransactionResolution::COMMIT).await;
    let t = wait_state(&broker, &id, TxnState::Committed).await;
    let check = t.timeline.iter().find(|e| e.kind == "check" && e.answered).expect("a check was answered");
    assert_ne!(check.client, t.producer, "the check went to the second producer");
    let c = consumer(&broker, "inventory", &["orders"]).await;
    assert_eq!(bodies(&drain(&c, "orders", &tags("*"), 1, WAIT).await), ["orphan"]);
    drop(second);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_transactions_survive_a_restart_and_checks_resolve_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = txn_config(dir.path());
    config.txn_timeout = Duration::from_secs(3);
    let broker = start(config.clone()).await;
    let addr = broker.addr;
    let p = txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = p.send_transaction_message(half("orders", &format!("pending-{i}"))).await.unwrap();
        ids.push(t.transaction_id().to_string());
    }
    drop(p);
    broker.stop().await.unwrap();

    // Same directory, same address: the half messages and their schedule are still there.
    config.listen = addr;
    let broker = start(config).await;
    for id in &ids {
        assert_eq!(txn(&broker, id).await.state, TxnState::Pending as i32);
    }
    let _checker = txn_producer(&broker, &["orders"], || TransactionResolution::COMMIT).await;
    for id in &ids {
        wait_state(&broker, id, TxnState::Committed).await;
    }
    let c = consumer(&broker, "inventory", &["orders"]).await;
    assert_eq!(drain(&c, "orders", &tags("*"), 5, WAIT).await.len(), 5);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sends_are_idempotent_and_type_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(txn_config(dir.path())).await;
    let mut raw =
        v2::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let msg = |group: Option<&str>, topic: &str| v2::Message {
        topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: "01RETRIED".into(),
            message_type: v2::MessageType::Transaction as i32,
            body_encoding: v2::Encoding::Identity as i32,
            message_group: group.map(str::to_string),
            ..Default::default()
        }),
        body: b"x".to_vec(),
    };
    let send = |m: v2::Message| v2::SendMessageRequest { messages: vec![m] };
    let a = raw.send_message(send(msg(None, "retries"))).await.unwrap().into_inner();
    let b = raw.send_message(send(msg(None, "retries"))).await.unwrap().into_inner();
    assert_eq!(a.entries[0].status.as_ref().unwrap().code, v2::Code::Ok as i32);
    assert!(!a.entries[0].transaction_id.is_empty());
    assert_eq!(a.entries[0].transaction_id, b.entries[0].transaction_id, "a retried half send is the same transaction");

    let r = raw.send_message(send(msg(Some("g"), "retries"))).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::MessagePropertyConflictWithType as i32);

    let mut admin = common::admin(&broker).await;
    admin
        .create_topic(txmq_proto::admin::CreateTopicRequest {
            name: "plain".into(),
            r#type: txmq_proto::admin::TopicType::Normal as i32,
            queue_count: 2,
        })
        .await
        .unwrap();
    let r = raw.send_message(send(msg(None, "plain"))).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::MessagePropertyConflictWithType as i32, "NORMAL topics refuse halves");
    broker.stop().await.unwrap();
}
