//! Store fault injection: a failed write or fsync is answered as an error (never acked), the
//! store then refuses every write until restart, the broker keeps serving reads, and its
//! status says what happened. Nothing unflushed is ever visible to consumers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;
use txmq_broker::config::Config;
use txmq_broker::store::faults::FaultyStore;
use txmq_broker::store::MemoryStore;
use txmq_proto::admin as pb;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

fn send_req(id: &str) -> v2::SendMessageRequest {
    v2::SendMessageRequest {
        messages: vec![v2::Message {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: "t".into() }),
            user_properties: Default::default(),
            system_properties: Some(v2::SystemProperties {
                message_id: id.into(),
                message_type: v2::MessageType::Normal as i32,
                body_encoding: v2::Encoding::Identity as i32,
                ..Default::default()
            }),
            body: id.as_bytes().to_vec(),
        }],
    }
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
