//! Store fault injection: a failed write or fsync is answered as an error (never acked), the
//! store then refuses every write until restart, the broker keeps serving reads, and its
//! status says what happened. Nothing unflushed is ever visible to consumers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;
use txmq_broker::config::Config;
use txmq_broker::store::faults::FaultyStore;
use txmq_broker::store::MemoryStore;
use txmq_proto::admin as pb;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

fn send_req(id: &str) -> v2::SendMessageRequest {
    common::send_request("t", id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acked_and_poisons_writes() {
    for fail_flush in [true, false] {
        let (store, faults) = FaultyStore::new(MemoryStore::new());
        let mut config = Config::with_data_dir("/nonexistent");
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.long_polling_max = Duration::from_secs(1);
        let broker = txmq_broker::server::spawn_with(config, Some(Arc::new(store))).await.unwrap();
        let url = format!("http://{}", broker.addr);
        let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();
        let mut admin = pb::admin_client::AdminClient::connect(url).await.unwrap();
        let code = |r: v2::SendMessageResponse| r.status.unwrap().code;

        assert_eq!(code(c.send_message(send_req("ok-1")).await.unwrap().into_inner()), v2::Code::Ok as i32);
        if fail_flush {
            faults.fail_flushes(1);
        } else {
            faults.fail_applies(1);
        }
        let failed = c.send_message(send_req("lost")).await.unwrap().into_inner();
        assert_eq!(failed.entries.len(), 1);
        assert_eq!(code(failed), v2::Code::InternalServerError as i32, "the failed write is not acked");
        // The fault is gone, but the store stays read-only until a restart.
        let after = c.send_message(send_req("after")).await.unwrap().into_inner();
        assert_eq!(code(after), v2::Code::InternalServerError as i32);
        assert_eq!(faults.injected(), 1);

        let status = admin.broker_status(pb::BrokerStatusRequest {}).await.unwrap().into_inner();
        assert!(!status.store_writable);
        assert!(status.store_error.contains("injected"), "{}", status.store_error);
        // Reads keep working, and only the acknowledged message is there.
        let d = admin.describe_topic(pb::DescribeTopicRequest { name: "t".into() }).await.unwrap().into_inner();
        assert_eq!(d.message_count, 1);
        let req = v2::ReceiveMessageRequest {
            group: Some(v2::Resource { resource_namespace: String::new(), name: "g".into() }),
            message_queue: Some(v2::MessageQueue {
                topic: Some(v2::Resource { resource_namespace: String::new(), name: "t".into() }),
                ..Default::default()
            }),
            filter_expression: None,
            batch_size: 32,
            invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            attempt_id: None,
        };
        // Receiving needs a write (the group's delivery record): refused, with a clear status.
        let mut stream = c.receive_message(req).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(matches!(
            first.content,
            Some(v2::receive_message_response::Content::Status(s)) if s.code == v2::Code::InternalServerError as i32
        ));
        broker.stop().await.unwrap();
    }
}

/// Finding 4: a half send whose flush failed was answered with an error; the client's retry
/// (same message id) must not be answered OK from the applied-but-never-durable record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_half_send_after_a_failed_flush_is_not_acked() {
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let mut config = Config::with_data_dir("/nonexistent");
    config.listen = "127.0.0.1:0".parse().unwrap();
    let broker = txmq_broker::server::spawn_with(config, Some(Arc::new(store))).await.unwrap();
    let mut c = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let ok = c.send_message(send_req("creates-the-topic")).await.unwrap().into_inner();
    assert_eq!(ok.status.unwrap().code, v2::Code::Ok as i32);
    let mut half = send_req("half-1");
    half.messages[0].system_properties.as_mut().unwrap().message_type = v2::MessageType::Transaction as i32;
    faults.fail_flushes(1);
    let first = c.send_message(half.clone()).await.unwrap().into_inner();
    assert_eq!(first.status.unwrap().code, v2::Code::InternalServerError as i32);
    let retry = c.send_message(half).await.unwrap().into_inner();
    let entry = &retry.entries[0];
    assert_eq!(
        (retry.status.unwrap().code, entry.transaction_id.as_str()),
        (v2::Code::InternalServerError as i32, ""),
        "the retry must not be acknowledged"
    );
    broker.stop().await.unwrap();
}

type Messaging = MessagingServiceClient<tonic::transport::Channel>;

use common::res;

async fn receive(c: &mut Messaging, group: &str) -> Result<Vec<(String, String)>, i32> {
    let mut stream = c.receive_message(common::receive_request(group, "t", 2)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        match item.content {
            Some(v2::receive_message_response::Content::Message(m)) => {
                let sp = m.system_properties.unwrap();
                out.push((sp.message_id, sp.receipt_handle.unwrap_or_default()));
            }
            Some(v2::receive_message_response::Content::Status(s))
                if s.code != v2::Code::Ok as i32 && s.code != v2::Code::MessageNotFound as i32 =>
            {
                return Err(s.code)
            }
            _ => {}
        }
    }
    Ok(out)
}

async fn found(admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>, id: &str) -> bool {
    let req = pb::FindMessagesRequest { topic: "t".into(), message_id: id.into(), ..Default::default() };
    !admin.find_messages(req).await.unwrap().into_inner().messages.is_empty()
}

/// A group commit that fails takes every request in it down — sends, an ack, an
/// EndTransaction and a ChangeInvisibleDuration that queued up behind a held write and were
/// committed together — and every request after it: none is acknowledged or visible (lookup by
/// id; after a restart on the same store, a real receive). Run with a failed apply (nothing of
/// the group written) and a failed fsync (written but not known durable: after the restart
/// each request is there whole or not at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_commit_fails_every_request_in_it_and_behind_it() {
    for fail_flush in [false, true] {
        let (store, faults) = FaultyStore::new(MemoryStore::new());
        let store: Arc<dyn txmq_broker::store::Store> = Arc::new(store);
        let mut config = Config::with_data_dir("/nonexistent");
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.long_polling_max = Duration::from_secs(1);
        config.min_invisible = Duration::from_secs(1);
        let broker = txmq_broker::server::spawn_with(config.clone(), Some(store.clone())).await.unwrap();
        let url = format!("http://{}", broker.addr);
        let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();
        let mut admin = pb::admin_client::AdminClient::connect(url).await.unwrap();
        let code = |s: Option<v2::Status>| s.unwrap().code;
        const OK: i32 = v2::Code::Ok as i32;

        // Before: two deliveries to group g (one to ack, one to re-time), one pending half.
        for id in ["ok-1", "ok-2"] {
            assert_eq!(code(c.send_message(send_req(id)).await.unwrap().into_inner().status), OK);
        }
        let delivered = receive(&mut c, "g").await.unwrap();
        assert_eq!(delivered.len(), 2);
        let mut half = send_req("half-1");
        half.messages[0].system_properties.as_mut().unwrap().message_type = v2::MessageType::Transaction as i32;
        let half = c.send_message(half).await.unwrap().into_inner();
        let txn = half.entries[0].transaction_id.clone();

        // Hold the writer on one send, queue everything else behind it, then fail the next
        // group commit (the one they share).
        faults.hold_applies();
        let applies = faults.applies();
        let mut held_client = c.clone();
        let held = tokio::spawn(async move { held_client.send_message(send_req("held")).await.unwrap().into_inner() });
        while faults.applies() == applies {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut queued = tokio::task::JoinSet::new();
        for i in 0..6 {
            let mut c = c.clone();
            queued.spawn(async move {
                ("send", code(c.send_message(send_req(&format!("f{i}"))).await.unwrap().into_inner().status))
            });
        }
        {
            let mut c = c.clone();
            let (id, handle) = delivered[0].clone();
            queued.spawn(async move {
                let entries = vec![v2::AckMessageEntry { message_id: id, receipt_handle: handle, lite_topic: None }];
                let req = v2::AckMessageRequest { group: res("g"), topic: res("t"), entries };
                ("ack", code(c.ack_message(req).await.unwrap().into_inner().status))
            });
        }
        {
            let mut c = c.clone();
            let txn = txn.clone();
            queued.spawn(async move {
                let req = v2::EndTransactionRequest {
                    topic: res("t"),
                    message_id: "half-1".into(),
                    transaction_id: txn,
                    resolution: v2::TransactionResolution::Commit as i32,
                    source: v2::TransactionSource::SourceClient as i32,
                    trace_context: String::new(),
                };
                ("end-transaction", code(c.end_transaction(req).await.unwrap().into_inner().status))
            });
        }
        {
            let mut c = c.clone();
            let (id, handle) = delivered[1].clone();
            queued.spawn(async move {
                let req = v2::ChangeInvisibleDurationRequest {
                    group: res("g"),
                    topic: res("t"),
                    receipt_handle: handle,
                    invisible_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                    message_id: id,
                    lite_topic: None,
                    suspend: None,
                };
                ("change-invisible", code(c.change_invisible_duration(req).await.unwrap().into_inner().status))
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // all nine are queued behind "held"
        if fail_flush {
            faults.fail_flush_after(1);
        } else {
            faults.fail_apply_after(1);
        }
        faults.release();
        assert_eq!(code(held.await.unwrap().status), OK, "the held write itself succeeds");
        let mut failed = 0;
        while let Some(r) = queued.join_next().await {
            let (what, code) = r.unwrap();
            assert_eq!(
                code,
                v2::Code::InternalServerError as i32,
                "{what} in or behind the failed commit (flush: {fail_flush})"
            );
            failed += 1;
        }
        assert_eq!(failed, 9);
        assert_eq!(faults.injected(), 1);
        let after = c.send_message(send_req("after")).await.unwrap().into_inner();
        assert_eq!(code(after.status), v2::Code::InternalServerError as i32, "refused until a restart");
        for id in ["ok-1", "ok-2", "held"] {
            assert!(found(&mut admin, id).await, "{id} is stored");
        }
        for id in ["f0", "f3", "f5", "after"] {
            assert!(!found(&mut admin, id).await, "{id} was never acknowledged, yet visible");
        }
        broker.stop().await.unwrap();

        // A restart on the same store: writable again; what failed is wholly there or absent.
        let broker = txmq_broker::server::spawn_with(config.clone(), Some(store)).await.unwrap();
        let url = format!("http://{}", broker.addr);
        let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();
        let mut admin = pb::admin_client::AdminClient::connect(url).await.unwrap();
        assert_eq!(code(c.send_message(send_req("after-restart")).await.unwrap().into_inner().status), OK);
        let fresh: Vec<String> = receive(&mut c, "fresh").await.unwrap().into_iter().map(|(id, _)| id).collect();
        let failed_sends: Vec<&String> = fresh.iter().filter(|id| id.starts_with('f')).collect();
        for id in ["ok-1", "ok-2", "held", "after-restart"] {
            assert!(fresh.iter().any(|f| f == id), "{id} delivered after the restart: {fresh:?}");
        }
        let t = admin.get_transaction(pb::GetTransactionRequest { id: txn }).await.unwrap().into_inner();
        let state = t.transaction.unwrap().state;
        if fail_flush {
            // Written but not known durable: all six sends of the group, or none of them.
            assert!(failed_sends.len() == 6 || failed_sends.is_empty(), "a torn group: {failed_sends:?}");
            assert!(state == pb::TxnState::Pending as i32 || state == pb::TxnState::Committed as i32);
        } else {
            assert!(failed_sends.is_empty(), "a send whose write failed was delivered: {failed_sends:?}");
            assert_eq!(state, pb::TxnState::Pending as i32, "the failed EndTransaction changed nothing");
            assert!(!found(&mut admin, "f1").await);
            // The failed ack and invisibility change did nothing: both deliveries come back.
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let back: Vec<String> = receive(&mut c, "g").await.unwrap().into_iter().map(|(id, _)| id).collect();
            for id in ["ok-1", "ok-2"] {
                assert!(back.iter().any(|b| b == id), "{id} delivered to g again: {back:?}");
            }
        }
        broker.stop().await.unwrap();
    }
}

/// An EndTransaction COMMIT whose client gives up while its write waits (a deadline, a client
/// gone) still holds the transaction until that write is durable: a ROLLBACK sent meanwhile
/// sees the commit and is refused, so a published message is never recorded as rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cancelled_in_flight_still_holds_its_transaction_until_durable() {
    let (broker, faults) = common::spawn_faulty(|_| {}).await;
    let url = format!("http://{}", broker.addr);
    let mut c = MessagingServiceClient::connect(url.clone()).await.unwrap();
    let mut half = send_req("h1");
    half.messages[0].system_properties.as_mut().unwrap().message_type = v2::MessageType::Transaction as i32;
    let txn = c.send_message(half).await.unwrap().into_inner().entries[0].transaction_id.clone();
    let end = |resolution: v2::TransactionResolution| v2::EndTransactionRequest {
        topic: res("t"),
        message_id: "h1".into(),
        transaction_id: txn.clone(),
        resolution: resolution as i32,
        source: v2::TransactionSource::SourceClient as i32,
        trace_context: String::new(),
    };

    let (mut committer, commit) = (c.clone(), end(v2::TransactionResolution::Commit));
    let committing = common::start_held(&faults, async move { committer.end_transaction(commit).await }).await;
    committing.abort();
    let _ = committing.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut roller, rollback) = (c.clone(), end(v2::TransactionResolution::Rollback));
    let rolling = tokio::spawn(async move { roller.end_transaction(rollback).await.unwrap().into_inner() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    faults.release();

    let answer = rolling.await.unwrap().status.unwrap();
    assert_ne!(answer.code, v2::Code::Ok as i32, "a rollback after the commit was taken: {}", answer.message);
    let t = common::admin_transaction(&url, &txn).await;
    assert_eq!(t.state, pb::TxnState::Committed as i32);
    let delivered = receive(&mut c, "g").await.unwrap();
    assert_eq!(delivered.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["h1"]);
    broker.stop().await.unwrap();
}
