//! The broker binary's lifecycle and topic policy: SIGTERM shuts it down cleanly (exit 0) with
//! everything acknowledged on disk; `--auto-create-topics false` answers TOPIC_NOT_FOUND.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use txmq_broker::broker::Broker;
use txmq_broker::config::Config;
use txmq_proto::v2;
use v2::messaging_service_client::MessagingServiceClient;

fn send_request(topic: &str, id: &str) -> v2::SendMessageRequest {
    v2::SendMessageRequest {
        messages: vec![v2::Message {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: topic.into() }),
            user_properties: Default::default(),
            system_properties: Some(v2::SystemProperties {
                message_id: id.into(),
                message_type: v2::MessageType::Normal as i32,
                body_encoding: v2::Encoding::Identity as i32,
                ..Default::default()
            }),
            body: b"x".to_vec(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, drain) = common::start_broker(dir.path(), &[]);
    let mut client = MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
    for i in 0..50 {
        let r = client.send_message(send_request("shutdown", &format!("m{i}"))).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, v2::Code::Ok as i32);
    }
    // A Telemetry stream is open: shutdown must end it rather than hang on it.
    let (_tx, rx) = tokio::sync::mpsc::channel::<v2::TelemetryCommand>(1);
    let _stream = client.telemetry(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    let log = drain.join().unwrap().join("\n");
    assert!(log.contains("store flushed; broker stopped"), "{log}");
    let broker = Broker::open(Config::with_data_dir(dir.path())).unwrap();
    for i in 0..50 {
        assert!(broker.log().locate("shutdown", &format!("m{i}")).unwrap().is_some());
    }
    broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_unknown_topics_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.auto_create_topics = false;
    let broker = txmq_broker::server::spawn(config).await.unwrap();
    let mut client = MessagingServiceClient::connect(format!("http://{}", broker.addr)).await.unwrap();
    let route = client
        .query_route(v2::QueryRouteRequest {
            topic: Some(v2::Resource { resource_namespace: String::new(), name: "nope".into() }),
            endpoints: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.status.unwrap().code, v2::Code::TopicNotFound as i32);
    assert!(route.message_queues.is_empty());
    let sent = client.send_message(send_request("nope", "m1")).await.unwrap().into_inner();
    assert_eq!(sent.status.unwrap().code, v2::Code::TopicNotFound as i32);
    assert_eq!(sent.entries.len(), 1, "one entry per message, even on failure");
    broker.stop().await.unwrap();
}
