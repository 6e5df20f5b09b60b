//! A disk that fills up, seen by the official Rust client: new messages are refused a margin
//! before it is full (`--min-free-disk-bytes`) while acks, commits and the store go on, and
//! sends are taken again once space is freed, without a restart.
//!
//! Before, the first write that found the disk full failed its flush, and the store then
//! refused every write until a restart: acks and commits too.
//!
//! The disk is the temporary directory's own: the test sets the floor 1 GiB under its free
//! space and takes 2 GiB with `fallocate`, so it needs about 3 GiB free.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{admin, code_of, consumer, producer, start, tags, txn_producer};
use rocketmq::model::message::MessageBuilder;
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use std::time::{Duration, Instant};
use txmq_broker::disk::DiskSpace;
use txmq_proto::admin as pb;

const GIB: u64 = 1 << 30;

fn message(body: &str) -> impl rocketmq::model::message::Message {
    MessageBuilder::builder().set_topic("orders").set_body(body.as_bytes().to_vec()).build().unwrap()
}

async fn status(broker: &txmq_broker::server::RunningBroker) -> pb::BrokerStatusResponse {
    admin(broker).await.broker_status(pb::BrokerStatusRequest {}).await.unwrap().into_inner()
}

/// Sends `{prefix}{i}` until a send is refused or `within` passes; the bodies sent and the
/// refusal.
async fn send_until_refused(
    p: &rocketmq::Producer,
    prefix: &str,
    within: Duration,
) -> (Vec<String>, Option<rocketmq::error::ClientError>) {
    let started = Instant::now();
    let mut sent = Vec::new();
    while started.elapsed() < within {
        let body = format!("{prefix}{}", sent.len());
        match p.send(message(&body)).await {
            Ok(_) => sent.push(body),
            Err(e) => return (sent, Some(e)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (sent, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_new_messages_but_not_acks_or_commits_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let free = DiskSpace::new(dir.path(), 0).free().expect("the free space of the temporary directory's disk");
    assert!(free > 3 * GIB, "this test needs 3 GiB free on the temporary directory's disk; {free} bytes are");
    let mut config = common::fast_config(&dir.path().join("data"));
    config.min_free_disk_bytes = free - GIB;
    let broker = start(config).await;

    let p = producer(&broker, &["orders"]).await;
    for i in 0..3 {
        p.send(message(&format!("before-{i}"))).await.expect("sends are taken while the disk has room");
    }
    let t = txn_producer(&broker, &["orders"], || TransactionResolution::UNKNOWN).await;
    let half = MessageBuilder::transaction_message_builder("orders", b"decided-while-full".to_vec()).build().unwrap();
    let pending = t.send_transaction_message(half).await.expect("a half message is taken while the disk has room");
    let c = consumer(&broker, "billing", &["orders"]).await;
    let mut received = Vec::new();
    let started = Instant::now();
    while received.len() < 3 && started.elapsed() < Duration::from_secs(10) {
        received.extend(c.receive("orders".to_string(), &tags("*")).await.expect("receive"));
    }
    assert_eq!(received.len(), 3, "the three messages sent before the disk filled are received");

    // Take 2 GiB: the free space falls 1 GiB under the floor.
    let junk = dir.path().join("junk");
    let taken = std::process::Command::new("fallocate").args(["-l", "2GiB"]).arg(&junk).status().unwrap();
    assert!(taken.success(), "fallocate of 2 GiB");
    let (during, refusal) = send_until_refused(&p, "during-", Duration::from_secs(5)).await;
    let e = refusal.expect("sends are refused within 5 s of the disk falling under the floor");
    assert_eq!(code_of(&e), "INTERNAL_SERVER_ERROR", "{e:?}");
    assert!(format!("{e:?}").contains("--min-free-disk-bytes"), "the refusal says why: {e:?}");
    let half = MessageBuilder::transaction_message_builder("orders", b"refused-half".to_vec()).build().unwrap();
    assert!(t.send_transaction_message(half).await.is_err(), "half messages are refused too");

    // What does not add messages goes on: acks, a commit, the status.
    for m in &received {
        c.ack(m).await.expect("acks are taken while new messages are refused");
    }
    pending.commit().await.expect("a commit is taken while new messages are refused");
    let s = status(&broker).await;
    assert!(s.store_writable, "the store stays writable: {}", s.store_error);
    assert!(s.messages_refused.contains("--min-free-disk-bytes"), "status says why: {:?}", s.messages_refused);
    assert!(
        s.disk_free_bytes > 0 && s.disk_free_bytes < free - GIB,
        "status shows the free space: {}",
        s.disk_free_bytes
    );

    // Space freed: sends are taken again, without a restart.
    std::fs::remove_file(&junk).unwrap();
    let started = Instant::now();
    loop {
        match p.send(message("after")).await {
            Ok(_) => break,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(5), "sends are taken again within 5 s: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status(&broker).await.messages_refused.is_empty(), "status no longer refuses");

    // Every message taken arrives once; the acked ones do not come back.
    let mut want: Vec<String> = during.iter().cloned().chain(["decided-while-full".into(), "after".into()]).collect();
    want.sort();
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < want.len() && started.elapsed() < Duration::from_secs(10) {
        for m in c.receive("orders".to_string(), &tags("*")).await.expect("receive") {
            c.ack(&m).await.expect("ack");
            got.push(String::from_utf8(m.body().to_vec()).unwrap());
        }
    }
    got.sort();
    assert_eq!(got, want);
    broker.stop().await.unwrap();
}
