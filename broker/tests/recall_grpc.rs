//! RecallMessage over raw gRPC: a delay message recalled before its delivery time is never
//! delivered (also after a restart), a second recall and a recall after the delivery time are
//! refused cleanly, and handles this broker never gave are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, res};
use std::time::Duration;
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

type Client = MessagingServiceClient<tonic::transport::Channel>;

async fn start(dir: &std::path::Path) -> (txmq_broker::server::RunningBroker, Client) {
    let mut c = Config::with_data_dir(dir);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.long_polling_max = Duration::from_secs(1);
    let broker = txmq_broker::server::spawn(c).await.unwrap();
    let client = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    (broker, client)
}

/// Sends a delay message due in `in_ms`; returns its recall handle.
async fn send_delayed(c: &mut Client, id: &str, in_ms: i64) -> String {
    let mut m = message("reminders", id, v2::MessageType::Delay, id.as_bytes());
    let at = txmq_broker::broker::now_ms() + in_ms;
    m.system_properties.as_mut().unwrap().delivery_timestamp =
        Some(prost_types::Timestamp { seconds: at / 1000, nanos: (at % 1000 * 1_000_000) as i32 });
    let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    let handle = r.entries[0].recall_handle.clone();
    assert!(!handle.is_empty(), "a delay message gets a recall handle");
    handle
}

async fn recall(c: &mut Client, handle: &str) -> (i32, String) {
    let r = c
        .recall_message(v2::RecallMessageRequest { topic: res("reminders"), recall_handle: handle.into() })
        .await
        .unwrap()
        .into_inner();
    (r.status.unwrap().code, r.message_id)
}

async fn received(c: &mut Client) -> Vec<String> {
    let mut stream = c.receive_message(common::receive_request("readers", "reminders", 30)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            ids.push(m.system_properties.unwrap().message_id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_delay_message_is_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut c) = start(dir.path()).await;
    let recalled = send_delayed(&mut c, "recalled", 3000).await;
    let _kept = send_delayed(&mut c, "kept", 3000).await;
    // A consumer group has passed over them (holding them until their time) before the recall.
    assert!(received(&mut c).await.is_empty(), "nothing is due yet");

    assert_eq!(recall(&mut c, &recalled).await, (v2::Code::Ok as i32, "recalled".to_string()));
    assert_eq!(recall(&mut c, &recalled).await.0, v2::Code::NotFound as i32, "a second recall fails cleanly");
    assert_eq!(recall(&mut c, "not-a-handle").await.0, v2::Code::BadRequest as i32);
    let due = send_delayed(&mut c, "due", 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recall(&mut c, &due).await.0, v2::Code::NotFound as i32, "its delivery time has passed");

    // The recall survives a restart; after the delivery time only the others arrive.
    broker.stop().await.unwrap();
    let (broker, mut c) = start(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(received(&mut c).await);
    }
    ids.sort();
    assert_eq!(ids, ["due", "kept"]);
    broker.stop().await.unwrap();
}
