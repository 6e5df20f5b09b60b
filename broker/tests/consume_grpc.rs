//! The consumption RPCs the official Rust client does not use (Python's push and simple
//! consumers do), over raw gRPC: ChangeInvisibleDuration, ForwardMessageToDeadLetterQueue,
//! QueryAssignment, filter and handle errors; and `--new-group-start latest`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tonic::transport::Channel;
use txmq_broker::config::Config;
use txmq_broker::consume::StartAt;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

type Client = MessagingServiceClient<Channel>;

fn res(name: &str) -> Option<v2::Resource> {
    Some(v2::Resource { resource_namespace: String::new(), name: name.into() })
}

async fn send(c: &mut Client, topic: &str, id: &str) {
    let m = v2::Message {
        topic: res(topic),
        user_properties: Default::default(),
        system_properties: Some(v2::SystemProperties {
            message_id: id.into(),
            message_type: v2::MessageType::Normal as i32,
            body_encoding: v2::Encoding::Identity as i32,
            ..Default::default()
        }),
        body: id.as_bytes().to_vec(),
    };
    let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
}

/// Receives; returns the stream's status code and messages.
async fn receive(
    c: &mut Client,
    group: &str,
    topic: &str,
    filter: v2::FilterExpression,
    invisible_s: i64,
) -> (i32, Vec<v2::Message>) {
    let req = v2::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(v2::MessageQueue { topic: res(topic), ..Default::default() }),
        filter_expression: Some(filter),
        batch_size: 16,
        invisible_duration: Some(prost_types::Duration { seconds: invisible_s, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        attempt_id: None,
    };
    let mut stream = c.receive_message(req).await.unwrap().into_inner();
    let (mut code, mut out) = (0, Vec::new());
    while let Some(item) = stream.message().await.unwrap() {
        match item.content.unwrap() {
            v2::receive_message_response::Content::Status(s) => code = s.code,
            v2::receive_message_response::Content::Message(m) => out.push(m),
            v2::receive_message_response::Content::DeliveryTimestamp(_) => {}
        }
    }
    (code, out)
}

fn all() -> v2::FilterExpression {
    v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "*".into() }
}

fn handle(m: &v2::Message) -> String {
    m.system_properties.as_ref().unwrap().receipt_handle.clone().unwrap()
}

async fn start(config: impl FnOnce(&mut Config)) -> (txmq_broker::server::RunningBroker, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::with_data_dir(dir.path());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.long_polling_max = Duration::from_secs(1);
    config(&mut c);
    let broker = txmq_broker::server::spawn(c).await.unwrap();
    let client = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    (broker, client, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_invisible_duration_issues_a_new_handle() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    send(&mut c, "jobs", "j1").await;
    let (_, got) = receive(&mut c, "g", "jobs", all(), 60).await;
    let old = handle(&got[0]);
    let req = |h: &str, secs: i64| v2::ChangeInvisibleDurationRequest {
        group: res("g"),
        topic: res("jobs"),
        receipt_handle: h.into(),
        invisible_duration: Some(prost_types::Duration { seconds: secs, nanos: 0 }),
        message_id: "j1".into(),
        lite_topic: None,
        suspend: None,
    };
    let r = c.change_invisible_duration(req(&old, 0)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    assert_ne!(r.receipt_handle, old);
    // Visible again at once: redelivered as attempt 2; the old handle is stale.
    let (_, again) = receive(&mut c, "g", "jobs", all(), 60).await;
    assert_eq!(again[0].system_properties.as_ref().unwrap().delivery_attempt, Some(2));
    let r = c.change_invisible_duration(req(&old, 5)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    assert_eq!(r.receipt_handle, old, "a refused change hands the caller's handle back");
    let r = c.change_invisible_duration(req("garbage", 5)).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_the_dead_letter_queue_moves_the_message() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    send(&mut c, "orders", "o1").await;
    let (_, got) = receive(&mut c, "fifo-group", "orders", all(), 60).await;
    let r = c
        .forward_message_to_dead_letter_queue(v2::ForwardMessageToDeadLetterQueueRequest {
            group: res("fifo-group"),
            topic: res("orders"),
            receipt_handle: handle(&got[0]),
            message_id: "o1".into(),
            delivery_attempt: 1,
            max_delivery_attempts: 1,
            lite_topic: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    let (_, dead) = receive(&mut c, "dlq-reader", "%DLQ%fifo-group", all(), 60).await;
    let sp = dead[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.message_id, "o1");
    let dlq = sp.dead_letter_queue.as_ref().unwrap();
    assert_eq!((dlq.topic.as_str(), dlq.message_id.as_str()), ("orders", "o1"));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_filters_and_handles() {
    let (broker, mut c, _dir) = start(|_| {}).await;
    let a = c
        .query_assignment(v2::QueryAssignmentRequest { topic: res("orders"), group: res("g"), endpoints: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.status.unwrap().code, v2::Code::Ok as i32);
    assert_eq!(a.assignments.len(), 1);
    let sql = v2::FilterExpression { r#type: v2::FilterType::Sql as i32, expression: "a > 1".into() };
    assert_eq!(receive(&mut c, "g", "orders", sql, 30).await.0, v2::Code::NotImplemented as i32);
    let empty_tag = v2::FilterExpression { r#type: v2::FilterType::Tag as i32, expression: "a||".into() };
    assert_eq!(receive(&mut c, "g", "orders", empty_tag, 30).await.0, v2::Code::IllegalFilterExpression as i32);
    assert_eq!(receive(&mut c, "g", "orders", all(), 0).await.0, v2::Code::IllegalInvisibleTime as i32);
    assert_eq!(receive(&mut c, "bad|group", "orders", all(), 30).await.0, v2::Code::IllegalConsumerGroup as i32);
    let ack = c
        .ack_message(v2::AckMessageRequest {
            group: res("g"),
            topic: res("orders"),
            entries: vec![v2::AckMessageEntry {
                message_id: "x".into(),
                receipt_handle: "not-a-handle".into(),
                lite_topic: None,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.status.unwrap().code, v2::Code::InvalidReceiptHandle as i32);
    assert_eq!(ack.entries.len(), 1);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_group_skips_what_came_before_it() {
    let (broker, mut c, _dir) = start(|c| c.new_group_start = StartAt::Latest).await;
    send(&mut c, "news", "before").await;
    let (code, got) = receive(&mut c, "late", "news", all(), 30).await;
    assert_eq!((code, got.len()), (v2::Code::MessageNotFound as i32, 0));
    send(&mut c, "news", "after").await;
    let (_, got) = receive(&mut c, "late", "news", all(), 30).await;
    assert_eq!(
        got.iter().map(|m| m.system_properties.as_ref().unwrap().message_id.as_str()).collect::<Vec<_>>(),
        ["after"]
    );
    broker.stop().await.unwrap();
}
