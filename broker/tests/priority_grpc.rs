//! PRIORITY messages over raw gRPC: priority p is stored in queue p of a PRIORITY topic and a
//! receive hands out higher priorities first; the range is the topic's queues; other topics
//! refuse PRIORITY messages and PRIORITY topics refuse others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, res};
use std::time::Duration;
use txmq_broker::config::Config;
use txmq_proto::{admin as pb, v2};

fn priority_message(id: &str, priority: Option<i32>) -> v2::Message {
    let mut m = message("urgent", id, v2::MessageType::Priority, id.as_bytes());
    m.system_properties.as_mut().unwrap().priority = priority;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_are_delivered_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.long_polling_max = Duration::from_secs(1);
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let url = format!("http://{}", broker.addr);
    let mut admin = pb::admin_client::AdminClient::connect(url.clone()).await.unwrap();
    let r = admin
        .create_topic(pb::CreateTopicRequest {
            name: "urgent".into(),
            r#type: pb::TopicType::Priority as i32,
            queue_count: 4,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.unwrap().code, pb::StatusCode::Ok as i32);
    let mut c = v2::messaging_service_client::MessagingServiceClient::connect(url).await.unwrap();
    let send = |m: v2::Message| {
        let mut c = c.clone();
        async move {
            let r = c.send_message(v2::SendMessageRequest { messages: vec![m] }).await.unwrap().into_inner();
            r.status.unwrap().code
        }
    };
    for (id, p) in [("low-1", 0), ("low-2", 0), ("mid", 1), ("high-1", 3), ("low-3", 0), ("high-2", 3)] {
        assert_eq!(send(priority_message(id, Some(p))).await, v2::Code::Ok as i32);
    }
    assert_eq!(
        send(priority_message("too-high", Some(4))).await,
        v2::Code::BadRequest as i32,
        "priorities are 0..=3 here"
    );
    assert_eq!(send(priority_message("no-priority", None)).await, v2::Code::MessagePropertyConflictWithType as i32);
    let normal = message("urgent", "normal", v2::MessageType::Normal, b"n");
    assert_eq!(
        send(normal).await,
        v2::Code::MessagePropertyConflictWithType as i32,
        "a PRIORITY topic takes PRIORITY messages"
    );
    let elsewhere = v2::Message { topic: res("plain"), ..priority_message("elsewhere", Some(0)) };
    assert_eq!(send(elsewhere).await, v2::Code::MessagePropertyConflictWithType as i32, "a MIXED topic refuses them");

    let mut req = common::receive_request("workers", "urgent", 30);
    req.batch_size = 3;
    let mut stream = c.receive_message(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        if let Some(v2::receive_message_response::Content::Message(m)) = item.content {
            let sp = m.system_properties.unwrap();
            assert_eq!(sp.message_type, v2::MessageType::Priority as i32);
            got.push((sp.message_id, sp.priority));
        }
    }
    assert_eq!(
        got,
        [("high-1".to_string(), Some(3)), ("high-2".to_string(), Some(3)), ("mid".to_string(), Some(1))],
        "the highest priorities first, in send order within one"
    );
    broker.stop().await.unwrap();
}
