//! Transaction bookkeeping through the broker API: per-message recovery durations, parking
//! and operator resume, and purging resolved transactions after their retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use txmq_broker::broker::{now_ms, Broker};
use txmq_broker::config::Config;
use txmq_broker::model::{MessageType, NewMessage};
use txmq_broker::txn::service::{CheckOutcome, MaxChecksPolicy};
use txmq_broker::txn::state::{Actor, Resolution, TxnState};

fn half(id: &str, recovery_ms: Option<i64>) -> NewMessage {
    NewMessage {
        topic: "orders".into(),
        message_id: id.into(),
        message_type: MessageType::Transaction,
        tag: None,
        keys: Vec::new(),
        message_group: None,
        born_timestamp: 0,
        born_host: "test".into(),
        delivery_timestamp: None,
        trace_context: None,
        recovery_duration_ms: recovery_ms,
        origin_topic: None,
        user_properties: Default::default(),
        body: b"x".to_vec(),
    }
}

async fn send_half(b: &Broker, id: &str, recovery_ms: Option<i64>) -> String {
    b.send("orders", vec![half(id, recovery_ms)], "producer-1").await.unwrap()[0].transaction_id.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_duration_parking_resume_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.txn_max_checks = 1;
    config.txn_check_interval = Duration::from_millis(200);
    config.txn_max_checks_policy = MaxChecksPolicy::Park;
    config.txn_retention = Duration::from_millis(200);
    let b = Broker::open(config).unwrap();

    // The message's own recovery duration sets its first check.
    let before = now_ms();
    let slow = send_half(&b, "slow", Some(60_000)).await;
    let t = b.transaction(&slow).unwrap().unwrap();
    assert!(t.next_check.unwrap() >= before + 60_000);
    assert!(b.due_transactions(now_ms(), 10).unwrap().is_empty(), "nothing due before 6 s");

    // One check (max 1), then the park policy; then an operator resumes it.
    let id = send_half(&b, "parked", Some(0)).await;
    let due = b.transaction(&id).unwrap().unwrap().next_check.unwrap();
    let sent = b.check_transaction(&id, due, |_, _| Some("producer-2".into())).await.unwrap();
    assert_eq!(sent, CheckOutcome::Sent { client: "producer-2".into() });
    let due = b.transaction(&id).unwrap().unwrap().next_check.unwrap();
    tokio::time::sleep(Duration::from_millis((due - now_ms()).max(0) as u64 + 10)).await;
    let exhausted = b.check_transaction(&id, due, |_, _| Some("producer-2".into())).await.unwrap();
    assert_eq!(exhausted, CheckOutcome::Exhausted { state: TxnState::Parked });
    assert!(
        !b.due_transactions(now_ms() + 3_600_000, 10).unwrap().iter().any(|(_, t)| *t == id),
        "parked ones are not checked"
    );
    let resumed = b.resume_transaction(&id, Some("fixed the database".into())).await.unwrap();
    assert_eq!((resumed.state, resumed.checks), (TxnState::Pending, 0));
    assert!(b.due_transactions(now_ms(), 10).unwrap().iter().any(|(_, t)| *t == id), "checks start over");

    // Resolved transactions are purged after the retention, with their half message.
    b.end_transaction("orders", "", &id, Resolution::Rollback, Actor::Operator, Some("refunded".into())).await.unwrap();
    assert_eq!(b.purge_transactions().await.unwrap(), 0, "kept during the retention");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(b.purge_transactions().await.unwrap(), 1);
    assert!(b.transaction(&id).unwrap().is_none());
    assert!(b.half_message(&id).unwrap().is_none());
    assert!(b.transaction(&slow).unwrap().is_some(), "pending ones are never purged");
    b.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_counting_read_past_the_first_pages() {
    let store = std::sync::Arc::new(txmq_broker::store::MemoryStore::new());
    let b = Broker::with_store(Config::with_data_dir("/unused"), store).unwrap();
    let mut ids = Vec::new();
    for i in 0..2_500 {
        ids.push(send_half(&b, &format!("m{i}"), None).await);
    }
    // The oldest 2,450 are resolved; the 50 newest stay pending, behind 2 full pages.
    for id in &ids[..2_450] {
        b.end_transaction("orders", "", id, Resolution::Rollback, Actor::Producer, None).await.unwrap();
    }
    let filter =
        txmq_broker::txn::service::TxnFilter { state: Some(TxnState::Pending), limit: 1000, ..Default::default() };
    let pending = b.list_transactions(&filter).unwrap();
    assert_eq!(pending.len(), 50);
    assert_eq!(pending[0].id, ids[2_450]);
    let counts = b.transaction_counts().unwrap();
    assert_eq!((counts.pending, counts.parked), (50, 0));
    let all = txmq_broker::txn::service::TxnFilter { limit: 10_000, ..Default::default() };
    assert_eq!(b.list_transactions(&all).unwrap().len(), 2_500);
    b.shutdown();
}
